"""posttrain/losses imports torch and the standard library only; posttrain/ops may also import posttrain.losses
(the layer above it), nothing else."""

import ast
import sys
from pathlib import Path

import pytest

import posttrain

PACKAGE = Path(posttrain.__file__).parent


def imported_modules(path: Path) -> list[str]:
    modules = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules.append("." * node.level + (node.module or ""))
    return modules


def allowed(module: str, own_packages: tuple[str, ...]) -> bool:
    if module.startswith("."):  # relative import inside the package
        return True
    top = module.split(".")[0]
    return top == "torch" or top in sys.stdlib_module_names \
        or any(module == p or module.startswith(p + ".") for p in own_packages)


@pytest.mark.parametrize("folder, own_packages", [("losses", ("posttrain.losses",)),
                                                  ("ops", ("posttrain.ops", "posttrain.losses"))])
def test_only_torch_and_stdlib_imports(folder, own_packages):
    files = sorted((PACKAGE / folder).glob("*.py"))
    assert files, f"no files in posttrain/{folder}"
    bad = [f"{path.name}: {module}" for path in files for module in imported_modules(path)
           if not allowed(module, own_packages)]
    assert not bad, f"posttrain/{folder} may import torch and the standard library only, found: {bad}"


def test_checker_catches_a_bad_import(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("import numpy\nfrom transformers import AutoModel\nimport math\nfrom torch import nn\n"
                    "from posttrain.data import schema\nfrom posttrain.losses.dpo import dpo_loss\n")
    rejected = [m for m in imported_modules(path) if not allowed(m, ("posttrain.losses",))]
    assert rejected == ["numpy", "transformers", "posttrain.data"]
