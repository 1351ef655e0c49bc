"""`docs/design.md` stays true to the repository: its public names import, and it points
to no path outside the repository (issue 17)."""

from __future__ import annotations

import re
from pathlib import Path

import dagster_inference_batch

DESIGN = (Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text()


def test_the_public_surface_it_lists_imports():
    section = DESIGN[DESIGN.index("## 3. Public surface") :]
    block = section[section.index("```python") + len("```python") : section.index("```\n\n")]
    exec(compile(re.sub(r"#.*", "", block), "design.md", "exec"), {})
    also = section[section.index("Also exported:") : section.index("CLI (")]
    for name in re.findall(r"`([A-Z]\w+|build_requests)", also):
        assert getattr(dagster_inference_batch, name), name


def test_it_points_to_no_path_outside_the_repository():
    assert not re.findall(r"\.\./\w", DESIGN)
