//! Without an instance id, a region or credentials in the configuration,
//! the EC2 client learns them from the instance metadata service (IMDSv2:
//! token first) and signs with the instance role's session credentials.
//! A small HTTP server on the loopback plays both IMDS and EC2.

use sluice_cloud::Cloud;
use sluice_cloud::ec2::{CredentialSource, Ec2, Ec2Config};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

struct Seen {
    requests: Vec<String>,
}

fn serve(listener: TcpListener, seen: Arc<Mutex<Seen>>) {
    for stream in listener.incoming().take(64) {
        let Ok(mut stream) = stream else { continue };
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            head.push(line.trim_end().to_string());
        }
        let header = |name: &str| {
            head.iter().find_map(|h| {
                h.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim().to_string())
            })
        };
        let len: usize = header("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        let request = head.first().cloned().unwrap_or_default();
        seen.lock().unwrap().requests.push(request.clone());
        let token_ok = header("x-aws-ec2-metadata-token").as_deref() == Some("TOKEN-1");
        let (status, text) = match request.split_whitespace().take(2).collect::<Vec<_>>()[..] {
            ["PUT", "/latest/api/token"] if header("x-aws-ec2-metadata-token-ttl-seconds").is_some() => {
                (200, "TOKEN-1".to_string())
            }
            ["GET", _] if !token_ok => (401, String::new()),
            ["GET", "/latest/meta-data/instance-id"] => (200, "i-from-imds".into()),
            ["GET", "/latest/meta-data/placement/region"] => (200, "eu-west-1".into()),
            ["GET", "/latest/meta-data/iam/security-credentials/"] => (200, "node-role\n".into()),
            ["GET", "/latest/meta-data/iam/security-credentials/node-role"] => (
                200,
                r#"{"Code":"Success","AccessKeyId":"ASIAROLE","SecretAccessKey":"s3cret","Token":"SESSION-1","Expiration":"2099-01-01T00:00:00Z"}"#.into(),
            ),
            ["POST", "/"] => {
                let auth = header("authorization").unwrap_or_default();
                let signed_by_role = auth.contains("Credential=ASIAROLE/")
                    && auth.contains("/eu-west-1/ec2/aws4_request")
                    && header("x-amz-security-token").as_deref() == Some("SESSION-1");
                let form = String::from_utf8_lossy(&body).to_string();
                if signed_by_role && form.contains("Action=DescribeInstances") && form.contains("InstanceId.1=i-from-imds") {
                    (
                        200,
                        r#"<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><reservationSet><item><instancesSet><item><instanceId>i-from-imds</instanceId><instanceType>c5.xlarge</instanceType><subnetId>subnet-1</subnetId><groupSet><item><groupId>sg-1</groupId></item></groupSet></item></instancesSet></item></reservationSet></DescribeInstancesResponse>"#.into(),
                    )
                } else {
                    (
                        403,
                        format!("<Response><Errors><Error><Code>AuthFailure</Code><Message>{auth}</Message></Error></Errors></Response>"),
                    )
                }
            }
            _ => (404, String::new()),
        };
        let _ = write!(
            stream,
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
            text.len()
        );
    }
}

#[test]
fn instance_region_and_role_credentials_from_the_metadata_service() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Seen { requests: Vec::new() }));
    let s = seen.clone();
    std::thread::spawn(move || serve(listener, s));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = Ec2Config {
            region: None,
            endpoint: Some(format!("{base}/")),
            instance_id: None,
            metadata_endpoint: Some(base.clone()),
            // Whatever this test's environment holds.
            credentials: CredentialSource::InstanceRole,
        };
        let ec2 = Ec2::new(&cfg, Default::default()).await.unwrap();
        assert_eq!(ec2.region(), "eu-west-1");
        let inst = ec2.instance().await.unwrap();
        assert_eq!(inst.id, "i-from-imds");
        assert_eq!(inst.instance_type, "c5.xlarge");
        // The credentials are read once and kept until they near expiry.
        ec2.instance().await.unwrap();
    });
    let requests = seen.lock().unwrap().requests.clone();
    let role_reads = requests
        .iter()
        .filter(|r| r.contains("security-credentials/node-role"))
        .count();
    assert_eq!(role_reads, 1, "{requests:#?}");
    assert_eq!(requests.iter().filter(|r| r.starts_with("POST")).count(), 2);
}
