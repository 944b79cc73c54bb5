"""The contract package is the one home of what server, models and client share: it must stay
importable where torch and Ray are not (the client, the ingress's parsing)."""

from __future__ import annotations

import subprocess
import sys


def test_every_contract_module_the_config_schema_and_the_client_load_neither_torch_nor_ray() -> None:
    code = (
        "import importlib, pkgutil, sys, contract, deployments.args, maas\n"
        "for module in pkgutil.iter_modules(contract.__path__):\n"
        "    importlib.import_module('contract.' + module.name)\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'ray') if m in sys.modules)\n"
        "print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
