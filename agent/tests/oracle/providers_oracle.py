#!/usr/bin/python3
"""cloud-init 22.4 as the oracle for the providers (agent/tests/providers_oracle.rs).

  providers_oracle.py netcfg FILE       NoCloud network-config (v1 or v2), rendered by
                                        cloud-init's networkd renderer: JSON {name: file}
  providers_oracle.py openstack FILE    OpenStack network_data.json through
                                        openstack.convert_net_json, then the same renderer
  providers_oracle.py ec2 URL           cloud-init's Ec2 datasource against an IMDS at URL:
                                        JSON {instance_id, hostname, keys, user_data, files}

Run it with /usr/bin/python3 (Debian's cloud-init).
"""
import json
import sys
import tempfile

import yaml
from cloudinit import helpers
from cloudinit.net import network_state, networkd
from cloudinit.sources import DataSourceEc2
from cloudinit.sources.helpers import openstack


def render(cfg):
    ns = network_state.parse_net_config_data(cfg)
    return networkd.Renderer({})._render_content(ns)


def netcfg(path):
    with open(path) as f:
        cfg = yaml.safe_load(f)
    if "network" in cfg and "version" not in cfg:
        cfg = cfg["network"]
    return render(cfg)


def known_macs(links):
    # the names the guest's NICs would have; only the MAC matches are compared
    return {
        l["ethernet_mac_address"].lower(): "eth%d" % i
        for i, l in enumerate(links)
        if l.get("ethernet_mac_address")
    }


def openstack_net(path):
    with open(path) as f:
        nd = json.load(f)
    cfg = openstack.convert_net_json(nd, known_macs=known_macs(nd.get("links", [])))
    return render(cfg)


def ec2(url):
    run = tempfile.mkdtemp()
    sys_cfg = {"datasource": {"Ec2": {"metadata_urls": [url], "timeout": 2, "max_wait": 10}}}
    ds = DataSourceEc2.DataSourceEc2(sys_cfg, None, helpers.Paths({"run_dir": run}))
    # on this machine DMI does not say AWS; the AWS code path is the one that uses IMDSv2 tokens
    ds._cloud_name = DataSourceEc2.CloudNames.AWS
    crawled = ds.crawl_metadata()
    if not crawled:
        sys.exit("cloud-init could not read the metadata service")
    ds.metadata = crawled["meta-data"]
    ud = crawled["user-data"]
    macs = sorted(ds.metadata["network"]["interfaces"]["macs"])
    netcfg = DataSourceEc2.convert_ec2_metadata_network_config(
        ds.metadata["network"],
        macs_to_nics={m: "eth%d" % i for i, m in enumerate(macs)},
    )
    return {
        "instance_id": ds.get_instance_id(),
        "hostname": ds.get_hostname().hostname,
        "keys": sorted(ds.get_public_ssh_keys()),
        "user_data": ud.decode() if isinstance(ud, bytes) else ud,
        "token_used": bool(ds._api_token),
        "files": render(netcfg),
    }


def main():
    mode, arg = sys.argv[1], sys.argv[2]
    out = {"netcfg": netcfg, "openstack": openstack_net, "ec2": ec2}[mode](arg)
    json.dump(out, sys.stdout, sort_keys=True)


if __name__ == "__main__":
    main()
