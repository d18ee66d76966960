#!/usr/bin/env python3
"""A local EC2 for the ENI pool's tests: moto's server, a VPC with an
instance in it, and a proxy in front that can throttle, run the subnet dry
or hold one action (to kill the agent while it waits).

    ec2sim.py serve PORT                    moto's EC2 on 127.0.0.1:PORT
    ec2sim.py setup ENDPOINT TYPE           a VPC, two subnets and an instance; JSON
    ec2sim.py state ENDPOINT                every ENI; JSON
    ec2sim.py proxy PORT UPSTREAM CONTROL LOG

The proxy reads CONTROL (JSON) at every request:
    {"throttle": N}     answer every Nth request RequestLimitExceeded (503)
    {"exhausted": true} CreateNetworkInterface and AssignPrivateIpAddresses
                        answer InsufficientFreeAddressesInSubnet
    {"hold": "Action"}  never forward that action; the request waits until
                        the client goes away (or 60 s), then gets a 503
    {"refuse": true}    answer every request 503 (the cloud is down)
and appends one line per request to LOG: "ACTION STATUS".
"""
import json
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve(port):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(port), verbose=False)
    server.start()
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        server.stop()


def client(endpoint):
    import boto3

    return boto3.client(
        "ec2",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def setup(endpoint, instance_type):
    ec2 = client(endpoint)
    vpc = ec2.create_vpc(CidrBlock="10.96.0.0/16")["Vpc"]["VpcId"]
    ec2.associate_vpc_cidr_block(VpcId=vpc, AmazonProvidedIpv6CidrBlock=True)
    v6 = ec2.describe_vpcs(VpcIds=[vpc])["Vpcs"][0]["Ipv6CidrBlockAssociationSet"][0]["Ipv6CidrBlock"]
    v6_64 = v6.split("::")[0] + "::/64"
    main = ec2.create_subnet(VpcId=vpc, CidrBlock="10.96.0.0/20", Ipv6CidrBlock=v6_64)["Subnet"]["SubnetId"]
    pods = ec2.create_subnet(VpcId=vpc, CidrBlock="10.96.32.0/19")["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(GroupName="nodes", Description="nodes", VpcId=vpc)["GroupId"]
    inst = ec2.run_instances(
        ImageId="ami-12c6146b",
        MinCount=1,
        MaxCount=1,
        InstanceType=instance_type,
        SubnetId=main,
        SecurityGroupIds=[sg],
    )["Instances"][0]["InstanceId"]
    print(json.dumps({"vpc": vpc, "subnet": main, "podSubnet": pods, "securityGroup": sg, "instance": inst}))


def state(endpoint):
    ec2 = client(endpoint)
    out = []
    for e in ec2.describe_network_interfaces()["NetworkInterfaces"]:
        att = e.get("Attachment") or {}
        out.append(
            {
                "id": e["NetworkInterfaceId"],
                "mac": e["MacAddress"].lower(),
                "status": e["Status"],
                "instance": att.get("InstanceId"),
                "deviceIndex": att.get("DeviceIndex"),
                "subnet": e["SubnetId"],
                "ips": [a["PrivateIpAddress"] for a in e.get("PrivateIpAddresses", []) if not a.get("Primary")],
                "ipv6": [a["Ipv6Address"] for a in e.get("Ipv6Addresses", [])],
                "tags": {t["Key"]: t["Value"] for t in e.get("TagSet", [])},
            }
        )
    print(json.dumps(out))


ERROR = '<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}</Code><Message>{msg}</Message></Error></Errors><RequestID>sim</RequestID></Response>'


def proxy(port, upstream, control, log):
    lock = threading.Lock()
    counter = [0]

    def note(action, status):
        with lock:
            with open(log, "a") as f:
                f.write(f"{action} {status}\n")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def answer(self, status, body, headers=()):
            data = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            for k, v in headers:
                if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            action = urllib.parse.parse_qs(body.decode()).get("Action", ["?"])[0]
            try:
                with open(control) as f:
                    ctl = json.load(f)
            except (OSError, ValueError):
                ctl = {}
            with lock:
                counter[0] += 1
                n = counter[0]
            if ctl.get("refuse"):
                note(action, 503)
                return self.answer(503, ERROR.format(code="Unavailable", msg="the cloud is down"))
            if ctl.get("hold") == action:
                note(action, "held")
                deadline = time.time() + 60
                # Wait for the client to go away: a read returns b"" then.
                self.connection.settimeout(0.2)
                while time.time() < deadline:
                    try:
                        if self.connection.recv(1) == b"":
                            return
                    except OSError as e:
                        if "timed out" not in str(e):
                            return
                return self.answer(503, ERROR.format(code="Unavailable", msg="held"))
            throttle = ctl.get("throttle", 0)
            if throttle and n % throttle == 0:
                note(action, 503)
                return self.answer(503, ERROR.format(code="RequestLimitExceeded", msg="Request limit exceeded."))
            if ctl.get("exhausted") and action in ("CreateNetworkInterface", "AssignPrivateIpAddresses"):
                note(action, 400)
                msg = "There are not enough free addresses in subnet to satisfy the requested number of instances."
                return self.answer(400, ERROR.format(code="InsufficientFreeAddressesInSubnet", msg=msg))
            req = urllib.request.Request(upstream, data=body, method="POST")
            for k, v in self.headers.items():
                if k.lower() not in ("host", "content-length", "connection"):
                    req.add_header(k, v)
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    status, data, headers = r.status, r.read(), r.getheaders()
            except urllib.error.HTTPError as e:
                status, data, headers = e.code, e.read(), e.headers.items()
            note(action, status)
            self.answer(status, data, headers)

    server = ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"serve": serve, "setup": setup, "state": state, "proxy": proxy}[cmd](*args)
