//! EC2's Query API answers (XML, one namespace per API version), read into
//! the cloud-neutral types. Element names are the API's wire names.

use crate::api::{Attachment, CloudEni, Instance, Subnet};
use roxmltree::{Document, Node};

fn child<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    n.children().find(|c| c.is_element() && c.tag_name().name() == name)
}

fn text(n: Node, name: &str) -> Option<String> {
    child(n, name).and_then(|c| c.text()).map(|t| t.trim().to_string())
}

/// The `<item>`s of the list element `set` under `n`.
fn items<'a, 'i>(n: Node<'a, 'i>, set: &str) -> impl Iterator<Item = Node<'a, 'i>> {
    child(n, set)
        .into_iter()
        .flat_map(|s| s.children().filter(|c| c.is_element() && c.tag_name().name() == "item"))
}

pub fn parse(body: &str) -> Result<Document<'_>, String> {
    Document::parse(body).map_err(|e| format!("not XML: {e}"))
}

/// `(code, message)` of an error answer:
/// `<Response><Errors><Error><Code>…</Code><Message>…</Message>`.
pub fn error(body: &str) -> Option<(String, String)> {
    let doc = Document::parse(body).ok()?;
    let e = doc
        .descendants()
        .find(|n| n.is_element() && n.tag_name().name() == "Error")?;
    Some((text(e, "Code")?, text(e, "Message").unwrap_or_default()))
}

fn parse_field<T: std::str::FromStr>(n: Node, name: &str, what: &str) -> Result<Option<T>, String> {
    match text(n, name) {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| format!("{what}: {name} {s:?} does not parse")),
    }
}

pub fn eni(n: Node) -> Result<CloudEni, String> {
    let id = text(n, "networkInterfaceId").ok_or("an ENI without networkInterfaceId")?;
    let what = format!("ENI {id}");
    let attachment = match child(n, "attachment") {
        Some(a) => match (text(a, "attachmentId"), text(a, "instanceId")) {
            (Some(aid), Some(inst)) if !inst.is_empty() => Some(Attachment {
                id: aid,
                instance_id: inst,
                device_index: parse_field(a, "deviceIndex", &what)?.unwrap_or(0),
            }),
            _ => None,
        },
        None => None,
    };
    let mut secondary_ipv4 = Vec::new();
    for item in items(n, "privateIpAddressesSet") {
        let primary = text(item, "primary").is_some_and(|p| p == "true");
        if let Some(ip) = parse_field(item, "privateIpAddress", &what)?
            && !primary
        {
            secondary_ipv4.push(ip);
        }
    }
    let mut ipv4_prefixes = Vec::new();
    for item in items(n, "ipv4PrefixSet") {
        if let Some(p) = parse_field(item, "ipv4Prefix", &what)? {
            ipv4_prefixes.push(p);
        }
    }
    let mut ipv6 = Vec::new();
    for item in items(n, "ipv6AddressesSet") {
        if let Some(ip) = parse_field(item, "ipv6Address", &what)? {
            ipv6.push(ip);
        }
    }
    let tags = items(n, "tagSet")
        .filter_map(|t| Some((text(t, "key")?, text(t, "value").unwrap_or_default())))
        .collect();
    Ok(CloudEni {
        mac: text(n, "macAddress").unwrap_or_default().to_ascii_lowercase(),
        subnet_id: text(n, "subnetId").unwrap_or_default(),
        status: text(n, "status").unwrap_or_default(),
        attachment,
        primary_ip: parse_field(n, "privateIpAddress", &what)?,
        secondary_ipv4,
        ipv4_prefixes,
        ipv6,
        tags,
        id,
    })
}

/// DescribeNetworkInterfaces: the ENIs and the next page's token.
pub fn enis(doc: &Document) -> Result<(Vec<CloudEni>, Option<String>), String> {
    let root = doc.root_element();
    let list = items(root, "networkInterfaceSet").map(eni).collect::<Result<_, _>>()?;
    Ok((list, text(root, "nextToken").filter(|t| !t.is_empty())))
}

/// CreateNetworkInterface: the ENI made.
pub fn created_eni(doc: &Document) -> Result<CloudEni, String> {
    eni(child(doc.root_element(), "networkInterface").ok_or("no networkInterface in the answer")?)
}

/// AttachNetworkInterface: the attachment id.
pub fn attachment_id(doc: &Document) -> Result<String, String> {
    text(doc.root_element(), "attachmentId").ok_or_else(|| "no attachmentId in the answer".into())
}

/// DescribeInstances of one instance.
pub fn instance(doc: &Document, id: &str) -> Result<Instance, String> {
    let inst = items(doc.root_element(), "reservationSet")
        .flat_map(|r| items(r, "instancesSet"))
        .find(|i| text(*i, "instanceId").as_deref() == Some(id))
        .ok_or_else(|| format!("instance {id} is not in the answer"))?;
    Ok(Instance {
        id: id.to_string(),
        instance_type: text(inst, "instanceType").ok_or_else(|| format!("instance {id}: no instanceType"))?,
        subnet_id: text(inst, "subnetId").ok_or_else(|| format!("instance {id}: no subnetId"))?,
        security_groups: items(inst, "groupSet").filter_map(|g| text(g, "groupId")).collect(),
    })
}

/// DescribeSubnets of one subnet.
pub fn subnet(doc: &Document, id: &str) -> Result<Subnet, String> {
    let s = items(doc.root_element(), "subnetSet")
        .find(|s| text(*s, "subnetId").as_deref() == Some(id))
        .ok_or_else(|| format!("subnet {id} is not in the answer"))?;
    let what = format!("subnet {id}");
    Ok(Subnet {
        id: id.to_string(),
        ipv4: parse_field(s, "cidrBlock", &what)?.ok_or_else(|| format!("{what}: no cidrBlock"))?,
        ipv6: items(s, "ipv6CidrBlockAssociationSet")
            .filter_map(|a| text(a, "ipv6CidrBlock"))
            .find_map(|c| c.parse().ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Trimmed from EC2's documented DescribeNetworkInterfaces answer, with
    // a prefix and an IPv6 address added.
    const DESCRIBE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeNetworkInterfacesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>fc45294c-006b-457b-bab9-012f5b3b0e40</requestId>
  <networkInterfaceSet>
    <item>
      <networkInterfaceId>eni-0f7db9a2bb3e7f3aa</networkInterfaceId>
      <subnetId>subnet-0a1b</subnetId>
      <status>in-use</status>
      <macAddress>02:1A:80:41:52:9C</macAddress>
      <privateIpAddress>10.0.1.17</privateIpAddress>
      <groupSet><item><groupId>sg-1</groupId><groupName>default</groupName></item></groupSet>
      <attachment>
        <attachmentId>eni-attach-0a1</attachmentId>
        <instanceId>i-0123</instanceId>
        <deviceIndex>2</deviceIndex>
        <status>attached</status>
      </attachment>
      <tagSet><item><key>sluice.dev/node</key><value>i-0123</value></item></tagSet>
      <privateIpAddressesSet>
        <item><privateIpAddress>10.0.1.17</privateIpAddress><primary>true</primary></item>
        <item><privateIpAddress>10.0.1.30</privateIpAddress><primary>false</primary></item>
      </privateIpAddressesSet>
      <ipv4PrefixSet><item><ipv4Prefix>10.0.1.64/28</ipv4Prefix></item></ipv4PrefixSet>
      <ipv6AddressesSet><item><ipv6Address>2600:1f18::7</ipv6Address></item></ipv6AddressesSet>
    </item>
    <item>
      <networkInterfaceId>eni-leak</networkInterfaceId>
      <status>available</status>
      <macAddress>02:00:00:00:00:09</macAddress>
    </item>
  </networkInterfaceSet>
  <nextToken>page2</nextToken>
</DescribeNetworkInterfacesResponse>"#;

    #[test]
    fn describe_network_interfaces() {
        let doc = parse(DESCRIBE).unwrap();
        let (list, next) = enis(&doc).unwrap();
        assert_eq!(next.as_deref(), Some("page2"));
        let e = &list[0];
        assert_eq!(e.mac, "02:1a:80:41:52:9c", "MACs are kept in lower case");
        assert_eq!(e.primary_ip, Some("10.0.1.17".parse().unwrap()));
        assert_eq!(
            e.secondary_ipv4,
            vec!["10.0.1.30".parse::<std::net::Ipv4Addr>().unwrap()]
        );
        assert_eq!(e.ipv4_prefixes, vec!["10.0.1.64/28".parse().unwrap()]);
        assert_eq!(e.ipv6, vec!["2600:1f18::7".parse::<std::net::Ipv6Addr>().unwrap()]);
        assert_eq!(e.device_index(), Some(2));
        assert_eq!(e.tags["sluice.dev/node"], "i-0123");
        assert_eq!(list[1].attachment, None);
        assert_eq!(list[1].status, "available");
    }

    #[test]
    fn errors_and_garbage() {
        let body = r#"<?xml version="1.0"?><Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>x</RequestID></Response>"#;
        assert_eq!(
            error(body),
            Some(("RequestLimitExceeded".into(), "Request limit exceeded.".into()))
        );
        assert_eq!(error("<html>bad gateway</html>"), None);
        let bad = DESCRIBE.replace("10.0.1.30", "10.0.1.300");
        let e = enis(&parse(&bad).unwrap()).unwrap_err();
        assert!(e.contains("eni-0f7db9a2bb3e7f3aa") && e.contains("10.0.1.300"), "{e}");
    }
}
