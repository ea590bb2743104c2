"""The package's layout holds: dependencies between sub-packages run one way, and every module says what it is."""

import ast
from pathlib import Path

import clip_lab

PACKAGE = Path(clip_lab.__file__).parent
# what each sub-package may import besides itself; errors, files and options sit beneath all of them
ALLOWED = {
    "models": set(),
    "data": {"models"},
    "eval": {"data", "models"},
    "train": {"eval", "data", "models"},
    "report": {"eval", "data"},  # reads results/ files: no job, no training code
    "jobs": {"train", "eval", "data", "models", "report"},
}
BENEATH = {"errors", "files", "options"}


def clip_lab_imports(path: Path) -> set[str]:
    """The first component under clip_lab of every clip_lab module `path` imports (at any depth in the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] if node.module != "clip_lab" else [f"clip_lab.{a.name}" for a in node.names]
        found |= {n.split(".")[1] for n in names if n.startswith("clip_lab.")}
    return found


def test_dependencies_run_one_way():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        part = path.relative_to(PACKAGE).parts[0]
        if part not in ALLOWED:
            continue
        for target in clip_lab_imports(path) - {part} - BENEATH:
            if target not in ALLOWED[part]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports clip_lab.{target}")
    assert not wrong, wrong


def test_the_modules_beneath_import_no_sub_package():
    for name in BENEATH:
        assert clip_lab_imports(PACKAGE / f"{name}.py") <= BENEATH


def test_every_module_and_sub_package_opens_with_a_one_line_docstring():
    for path in PACKAGE.rglob("*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text()), clean=False)
        assert doc and doc.strip(), f"{path} has no docstring"
        assert len(doc.splitlines()[0]) <= 117, f"{path}: the first line is no one-line summary"
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} == set(ALLOWED)


def test_the_configs_are_packaged_beside_the_code():
    configs = PACKAGE / "configs"
    assert (configs / "coco.yaml").is_file() and (configs / "prompts.yaml").is_file()
    assert Path(__file__).resolve().parents[1].joinpath("configs").resolve() == configs.resolve()
