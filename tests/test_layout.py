"""The layout says the architecture: the core runs without Lightning, and Lightning's private parts are reached
from one compatibility module only."""

import os
import re
import subprocess
import sys
import textwrap

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lightning_legr")

NO_LIGHTNING = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoLightning(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric", "torchmetrics"):
                raise ImportError(f"{name} is not installed here")

    sys.meta_path.insert(0, NoLightning())
    import torch
    import lightning_legr.core
    from lightning_legr import LeGRPruner, learn_transform, prune, restore
    from lightning_legr.models import cifar_resnet

    model, x = cifar_resnet(20), torch.randn(1, 3, 32, 32)
    small = prune(model, x, flops=0.5)
    rebuilt = restore(cifar_resnet(20), state_dict=small.state_dict())
    assert not any(m.split(".")[0] in ("lightning", "pytorch_lightning") for m in sys.modules)
    try:
        import lightning_legr.callback
    except ImportError as err:
        print("glue needs Lightning:", err)
    print("OK")
    """
)


def test_the_core_imports_and_prunes_without_lightning():
    done = subprocess.run([sys.executable, "-c", NO_LIGHTNING], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-2:] == ["glue needs Lightning: lightning is not installed here", "OK"]


PRIVATE = re.compile(r"\._data_source|\._data_fetcher|\._prefix\b|\._metric_attributes|\bfit_loop\b|\bepoch_loop\b")


def test_private_lightning_attributes_only_in_the_compatibility_module():
    offenders = []
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            path = os.path.join(root, name)
            if name.endswith(".py") and name != "_compat.py":
                for number, line in enumerate(open(path), 1):
                    if PRIVATE.search(line):
                        offenders.append(f"{os.path.relpath(path, PACKAGE)}:{number}: {line.strip()}")
    assert offenders == []


def test_the_core_imports_nothing_of_the_glue():
    for name in os.listdir(os.path.join(PACKAGE, "core")):
        if name.endswith(".py"):
            text = open(os.path.join(PACKAGE, "core", name)).read()
            imports = re.findall(r"^\s*(?:from|import) (lightning\S*)", text, re.M)
            assert [i for i in imports if not i.startswith("lightning_legr.core")] == [], name
