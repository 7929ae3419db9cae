#!/usr/bin/python3
"""What cloud-init 22.4 does to parse and render a CAPV-style input, without applying it:
render the jinja user-data with instance data, load and schema-check the cloud-config,
decode every write_files entry, and render the metadata's netplan v2 network to networkd
files. Used by scripts/bench-firstboot as the baseline for `capstan-agent firstboot --root`.

usage: cloudinit_parse_render.py METADATA USERDATA OUTDIR
"""
import os
import sys

from cloudinit import templater, util
from cloudinit.config import cc_write_files
from cloudinit.config.schema import get_schema, validate_cloudconfig_schema
from cloudinit.net import network_state, networkd


def main():
    md_path, ud_path, outdir = sys.argv[1:4]
    md = util.load_yaml(util.load_file(md_path))
    ud = util.load_file(ud_path)
    if ud.startswith("## template: jinja"):
        ud = ud.split("\n", 1)[1]
        hostname = md.get("local-hostname")
        # cloud-init's instance data carries both spellings of hyphenated keys
        meta = dict(md)
        meta.update({k.replace("-", "_"): v for k, v in md.items()})
        ud = templater.render_string(
            ud,
            {
                "local_hostname": hostname,
                "ds": {"meta_data": meta},
                "v1": {"local_hostname": hostname, "instance_id": md.get("instance-id")},
            },
        )
    cfg = util.load_yaml(ud)
    validate_cloudconfig_schema(cfg, get_schema())
    files = 0
    for f in cfg.get("write_files", []):
        cc_write_files.extract_contents(
            f.get("content", ""), cc_write_files.canonicalize_extraction(f.get("encoding"))
        )
        cc_write_files.decode_perms(f.get("permissions"), 0o644)
        files += 1
    ns = network_state.parse_net_config_data(md["network"])
    rendered = networkd.Renderer({})._render_content(ns)
    for name, text in rendered.items():
        with open(os.path.join(outdir, "10-cloud-init-%s.network" % name), "w") as out:
            out.write(text)
    print("cloud-init: %d files decoded, %d networkd files rendered" % (files, len(rendered)))


if __name__ == "__main__":
    main()
