//! A conflist runner that follows libcni's rules: each plugin gets its own
//! config plus the list's `name` and `cniVersion` and the previous result as
//! `prevResult`; DEL runs in reverse order; CHECK and DEL get the cached
//! result of the ADD.

use crate::cni::{Call, CniOutput};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;

pub struct Chain {
    pub conflist: Value,
    pub path: Vec<PathBuf>,
    /// The node namespace the runtime runs in.
    pub in_netns: Option<String>,
    cache: HashMap<(String, String), Value>,
}

#[derive(Debug)]
pub struct ChainError {
    pub plugin: String,
    pub output: CniOutput,
}

impl Chain {
    pub fn new(conflist: Value, in_netns: Option<String>) -> Chain {
        let path = crate::cni_path().split(':').map(PathBuf::from).collect();
        Chain {
            conflist,
            path,
            in_netns,
            cache: HashMap::new(),
        }
    }

    fn plugins(&self) -> Vec<Value> {
        self.conflist["plugins"]
            .as_array()
            .expect("conflist has plugins")
            .clone()
    }

    fn plugin_conf(&self, plugin: &Value, prev: Option<&Value>) -> Value {
        let mut c = plugin.clone();
        c["name"] = self.conflist["name"].clone();
        c["cniVersion"] = self.conflist["cniVersion"].clone();
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        c
    }

    fn binary(&self, plugin: &Value) -> PathBuf {
        let t = plugin["type"].as_str().expect("plugin type");
        self.path
            .iter()
            .map(|d| d.join(t))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("plugin {t} not in {:?}", self.path))
    }

    fn call(&self, plugin: &Value, cmd: &str, cid: &str, netns: &str, ifname: &str, conf: &Value) -> CniOutput {
        let bin = self.binary(plugin);
        Call::new(&bin, self.in_netns.as_deref())
            .standard(cmd, cid, netns, ifname)
            .run(&serde_json::to_vec(conf).unwrap())
    }

    /// Run `cmd` through `plugins` in order; each result becomes the next
    /// plugin's `prevResult` when `chain_results` (ADD), otherwise every
    /// plugin gets `prev` (CHECK and DEL get the cached ADD result).
    fn run(
        &self,
        plugins: &[Value],
        cmd: &str,
        (cid, netns, ifname): (&str, &str, &str),
        mut prev: Option<Value>,
        chain_results: bool,
    ) -> Result<Option<Value>, ChainError> {
        for p in plugins {
            let conf = self.plugin_conf(p, prev.as_ref());
            let out = self.call(p, cmd, cid, netns, ifname, &conf);
            if !out.success {
                return Err(ChainError {
                    plugin: p["type"].as_str().unwrap_or("").into(),
                    output: out,
                });
            }
            if chain_results {
                prev = Some(out.json());
            }
        }
        Ok(prev)
    }

    pub fn add(&mut self, cid: &str, netns: &str, ifname: &str) -> Result<Value, ChainError> {
        let result = self
            .run(&self.plugins(), "ADD", (cid, netns, ifname), None, true)?
            .unwrap_or(json!({}));
        self.cache.insert((cid.into(), ifname.into()), result.clone());
        Ok(result)
    }

    pub fn check(&self, cid: &str, netns: &str, ifname: &str) -> Result<(), ChainError> {
        let cached = self.cache.get(&(cid.into(), ifname.into())).cloned();
        self.run(&self.plugins(), "CHECK", (cid, netns, ifname), cached, false)
            .map(drop)
    }

    pub fn del(&mut self, cid: &str, netns: &str, ifname: &str) -> Result<(), ChainError> {
        let cached = self.cache.get(&(cid.into(), ifname.into())).cloned();
        let mut reversed = self.plugins();
        reversed.reverse();
        self.run(&reversed, "DEL", (cid, netns, ifname), cached, false)?;
        self.cache.remove(&(cid.into(), ifname.into()));
        Ok(())
    }
}
