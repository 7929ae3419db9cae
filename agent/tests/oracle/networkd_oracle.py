#!/usr/bin/python3
"""Render a cloud-init metadata document's `network` (netplan v2) with cloud-init's own
networkd renderer and print the files as JSON {interface-name: file content}.

Used by agent/tests/oracle_networkd.rs as the reference for capstan-agent's renderer.
Needs Debian's cloud-init (22.4): run it with /usr/bin/python3.
"""
import json
import sys

import yaml
from cloudinit.net import network_state, networkd


def main():
    with open(sys.argv[1]) as f:
        md = yaml.safe_load(f)
    ns = network_state.parse_net_config_data(md["network"])
    out = networkd.Renderer({})._render_content(ns)
    json.dump(out, sys.stdout, sort_keys=True)


if __name__ == "__main__":
    main()
