"""The repository as a whole: the package's import graph has no cycle and no import hides in a
function; every link in the README and docs/ leads to a file of this repository.
Run: pytest -q tests/test_repo.py"""
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import import_graph  # noqa: E402

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # markdown [text](target)


def test_the_package_has_no_import_cycle():
    edges = import_graph.graph()
    assert "minimoe.moe" in edges and "minimoe.run" in edges, "the graph must see the package"
    assert import_graph.cycle(edges) is None
    assert edges["minimoe.moe"] == set(), "the MoE layer is a leaf"


def test_the_cycle_finder_finds_a_cycle():
    assert import_graph.cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert import_graph.cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_hides_inside_a_function():
    """A function-level import of the package would dodge a cycle; one of a slow third-party
    module (torch's FSDP, imported only by the runs that shard) must say why on its line."""
    for path in (ROOT / "minimoe").rglob("*.py"):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                for n in ast.walk(node):
                    if isinstance(n, ast.ImportFrom):
                        assert n.level == 0 and not (n.module or "").startswith("minimoe"), \
                            f"{path.name}: {node.name} imports the package inside a function"
                    if isinstance(n, (ast.Import, ast.ImportFrom)):
                        assert "#" in lines[n.lineno - 1], \
                            f"{path.name}:{n.lineno}: a function-level import without its reason"


def markdown_files() -> list[Path]:
    return [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))


def test_every_relative_link_in_the_docs_resolves_inside_the_repository():
    checked = 0
    for doc in markdown_files():
        for target in LINK.findall(doc.read_text()):
            if re.match(r"[a-z]+://|mailto:", target):
                continue  # a web address
            path = target.split("#")[0]
            if not path:
                continue  # a link within the page
            resolved = (doc.parent / path).resolve()
            assert resolved.is_relative_to(ROOT), f"{doc.name}: {target} leaves the repository"
            assert resolved.exists(), f"{doc.name}: {target} does not exist"
            checked += 1
    assert checked > 10, "the docs should link to each other"


def test_nothing_refers_to_files_outside_the_repository():
    pattern = re.compile(r"\.\./shared|DESIGN" + " section")  # split: this line must pass
    for path in ROOT.rglob("*"):
        if path.is_file() and path.suffix in {".py", ".md", ".cpp", ".h", ".cu", ".sh"} \
                and ".git" not in path.parts:
            assert not pattern.search(path.read_text(errors="replace")), path
