"""The plugin author's API: what ``tailrunner`` exports, each name documented (as anyio checks)."""

from __future__ import annotations

import inspect
import re
from importlib import metadata
from pathlib import Path

import tailrunner

README = Path(__file__).parent.parent / "README.md"


def test_the_exports_are_the_plugin_authors_api() -> None:
    assert set(tailrunner.__all__) == {
        "EOF",
        "Activity",
        "ActivityContext",
        "AggregateRef",
        "Done",
        "Event",
        "EventStream",
        "Failed",
        "NewEvent",
        "Outcome",
        "SilentRetry",
        "SilentRetryAfter",
        "__version__",
        "activity",
        "hookimpl",
    }


def test_every_exported_name_is_described_in_the_module_docstring() -> None:
    doc = tailrunner.__doc__ or ""
    described = set(re.findall(r":(?:class|func|data):`(\w+)`", doc))
    missing = sorted(set(tailrunner.__all__) - described - {"__version__"})
    assert not missing, f"exported but not described in tailrunner's docstring: {missing}"


def test_every_exported_class_and_function_has_a_docstring_of_its_own() -> None:
    for name in tailrunner.__all__:
        value = getattr(tailrunner, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert (value.__doc__ or "").strip(), f"tailrunner.{name} has no docstring"


def test_everything_exported_exists_and_nothing_public_is_left_out_of_all() -> None:
    for name in tailrunner.__all__:
        assert hasattr(tailrunner, name), name
    public = {n for n in vars(tailrunner) if not n.startswith("_")}
    # Subpackages appear as attributes once imported; they are not exports.
    modules = {n for n in public if inspect.ismodule(getattr(tailrunner, n))}
    assert public - modules <= set(tailrunner.__all__)


def test_the_version_is_the_installed_distributions() -> None:
    assert tailrunner.__version__ == metadata.version("tailrunner")


def test_the_readme_examples_import_the_activity_api_only_from_tailrunner() -> None:
    text = README.read_text()
    # The activity author's sections (workflows have their own module).
    sections = [
        text.split(title, 1)[1].split("\n## ", 1)[0]
        for title in ("## Writing an activity", "## Testing an activity")
    ]
    imports = re.findall(r"^from (tailrunner[\w.]*) import", "".join(sections), re.MULTILINE)
    assert imports, "the README shows imports"
    # tailrunner.testing is the test author's kit; everything else comes from tailrunner.
    assert set(imports) <= {"tailrunner", "tailrunner.testing"}, imports
