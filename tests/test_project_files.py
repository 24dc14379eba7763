"""The README, Makefile, CI entry point and pyproject: what a new user reads and runs first, checked
where it can be checked mechanically (the commands exist and do what the README says, links
resolve, the documented response fields are the served ones)."""

from __future__ import annotations

import re
import tomllib
import typing

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()


def make_recipe(target: str) -> str:
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", MAKEFILE, flags=re.M)
    assert match, f"no make target {target}"
    return match.group(1)


def test_ci_runs_the_whole_suite_and_test_fast_skips_only_the_slow_marker() -> None:
    assert re.search(r"^exec make test$", (ROOT / ".ci" / "run").read_text(), flags=re.M)
    assert make_recipe("test").strip() == "./scripts/test.sh"  # no marker: everything
    assert make_recipe("test-fast").strip() == './scripts/test.sh -m "not slow"'
    assert 'exec .venv/bin/python -m pytest -q "$@"' in (ROOT / "scripts" / "test.sh").read_text()
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    assert any(m.startswith("slow:") for m in markers)
    used = sum(len(re.findall(r"pytest\.mark\.slow\b", p.read_text())) for p in (ROOT / "tests").rglob("test_*.py"))
    assert used >= 10


def test_readme_names_the_commands_and_settings_a_new_user_needs() -> None:
    for phrase in ("make test-fast", "make lint", "PYTHON=", "TORCH_INDEX_URL", "SETUP_DRY_RUN=1",
                   "leaves it running", "[docs/SCALING.md](docs/SCALING.md)", "/docs"):
        assert phrase in README, phrase
    assert "lint:" in MAKEFILE and "test-fast:" in MAKEFILE


def test_readme_links_resolve() -> None:
    links = re.findall(r"\]\(([^)#]+)\)", README)
    assert "docs/SCALING.md" in links
    for link in links:
        if "://" not in link:
            assert (ROOT / link).exists(), link


def test_the_curl_example_leaves_the_history_out() -> None:
    examples = [README, (ROOT / "scripts" / "demo.sh").read_text()]
    for text in examples:
        (body,) = re.findall(r"-d '(\{\"history\".*?\})'", text)
        assert '"exclude_seen": true' in body


def test_readme_lists_the_response_fields_and_the_request_defaults() -> None:
    from service.api.schemas import RecommendRequest, RecommendResponse

    service_section = README[README.index("## The service"):]
    for field in RecommendResponse.model_fields:
        assert f'"{field}"' in service_section, field
    (reasons,) = [typing.get_args(a) for a in typing.get_args(RecommendResponse.model_fields["fallback_reason"]
                                                               .annotation) if typing.get_args(a)]
    for reason in reasons:
        assert f'"{reason}"' in service_section, reason
    assert f"(default {RecommendRequest.model_fields['k'].default})" in service_section


def test_license_is_an_spdx_expression_and_the_backend_supports_it() -> None:
    from packaging.requirements import Requirement
    from packaging.version import Version

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "Apache-2.0"  # PEP 639: a string, not {text = ...}
    (backend,) = [Requirement(r) for r in pyproject["build-system"]["requires"] if r.startswith("setuptools")]
    (lowest,) = backend.specifier  # setuptools reads an SPDX `license` from 77.0 on
    assert lowest.operator == ">=" and Version(lowest.version) >= Version("77")
