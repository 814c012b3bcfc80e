#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Checks the vcpkg port's manifest: the JSON schema (vcpkg-port.schema.json),
that default features are declared features, and that the version is the one
in include/fastinfer/version.hpp. Then checks that the schema refuses
manifests vcpkg refuses, so a schema that accepts anything fails here.
Usage: check_manifest.py [vcpkg.json]"""
import copy
import json
import os
import re
import sys

import jsonschema

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")


def problems(manifest, schema):
    found = [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
             for e in jsonschema.Draft7Validator(schema).iter_errors(manifest)]
    for feature in manifest.get("default-features", []):
        if feature not in manifest.get("features", {}):
            found.append(f"default-features: '{feature}' is not a declared feature")
    return found


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "ports", "fastinfer", "vcpkg.json")
    with open(os.path.join(HERE, "vcpkg-port.schema.json")) as f:
        schema = json.load(f)
    jsonschema.Draft7Validator.check_schema(schema)
    with open(path) as f:
        manifest = json.load(f)
    errors = problems(manifest, schema)
    with open(os.path.join(ROOT, "include", "fastinfer", "version.hpp")) as f:
        version = re.search(r'FASTINFER_VERSION_STRING "([0-9.]+)"', f.read()).group(1)
    if manifest.get("version") != version:
        errors.append(f"version: '{manifest.get('version')}' but include/fastinfer/version.hpp says {version}")
    for feature in ("openmp", "cuda"):
        if feature not in manifest.get("features", {}):
            errors.append(f"features: no '{feature}'")
    if errors:
        sys.exit(f"{path}:\n  " + "\n  ".join(errors))

    # Manifests vcpkg refuses must be refused here too.
    broken = {
        "upper-case name": lambda m: m.update(name="FastInfer"),
        "two version fields": lambda m: m.update({"version-semver": "1.0.0"}),
        "unknown field": lambda m: m.update(licence="MIT"),
        "feature without description": lambda m: m["features"].update(extra={}),
        "reserved feature name": lambda m: m["features"].update(core={"description": "x"}),
        "dependency with an unknown key": lambda m: m["dependencies"].append({"name": "zlib", "optional": True}),
        "negative port-version": lambda m: m.update({"port-version": -1}),
    }
    for what, breaker in broken.items():
        bad = copy.deepcopy(manifest)
        breaker(bad)
        if not problems(bad, schema):
            sys.exit(f"the schema accepts a manifest with {what}")
    print(f"{os.path.relpath(path)}: valid (fastinfer {version}); the schema refuses {len(broken)} broken variants")


if __name__ == "__main__":
    main()
