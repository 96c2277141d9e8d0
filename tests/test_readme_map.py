"""README's map of the tree ("Where things live") names every module and op file, so a
newcomer finds any of them from it; a file added without a line there fails here."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _map():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    return text[text.index("## Where things live"):text.index("An op named `<stem>_...`")]


def test_the_map_names_every_module_and_op_file():
    text = _map()
    named = set(re.findall(r"[A-Za-z_][\w.]*", text))
    missing = []
    for folder, exts in (("python/fastsasrec", (".py",)), ("python/fastsasrec/serve", (".py",)),
                         ("cpp/src", (".cpp", ".h")), ("cpp/src/cpu", (".cpp", ".h")),
                         ("cpp/bindings", (".cpp", ".h")), ("cpp/include/fastsasrec", (".h", ".def")),
                         ("cuda", (".cu", ".cuh"))):
        for name in sorted(os.listdir(os.path.join(ROOT, folder))):
            if not name.endswith(exts) or name == "__init__.py":
                continue
            stem = name.rsplit(".", 1)[0]
            if name not in named and stem not in named:
                missing.append(f"{folder}/{name}")
    assert not missing, f"README's map does not name: {missing}"
