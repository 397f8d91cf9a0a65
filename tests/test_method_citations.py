"""Every ``docs/method.md`` citation in the code names a section, quirk and DACS step that exist.

The code cites the method document as ``docs/method.md §N`` / ``§N.M`` (also ``method.md §N.M``), optionally followed
by a quirk ``Q<k>`` (``§15 Q14``) or a step ``step K`` / ``steps K and L`` / ``steps K-L`` of a numbered list
(``§7.2 step 6`` for the DACS iteration, ``§10.1 step 3`` for a pipeline step). Several references may follow one
``method.md`` (``docs/method.md §7.2 step 6, §15 Q4``). Headings are ``## N.`` and ``### N.M`` lines; quirks are the
``**Q<k>**`` bullets of section 15; the steps of a section are the unindented numbered items of its own text.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Set, Tuple

import pytest


def _repository_root() -> Path:
    """First parent of this file holding both ``hrda_d2/`` and ``docs/`` (tests may move into subfolders)."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "hrda_d2").is_dir() and (parent / "docs").is_dir():
            return parent
    raise RuntimeError(f"no folder above {__file__} holds both hrda_d2/ and docs/")


ROOT = _repository_root()
METHOD_DOC = ROOT / "docs" / "method.md"
SCANNED_FOLDERS = ("hrda_d2", "hrda_d2_deploy", "tools", "demo", "datasets")

_HEADING = re.compile(r"^(#{2,3})\s+(\d+(?:\.\d+)?)[.\s]", re.MULTILINE)
_QUIRK = re.compile(r"^\*\s+\*\*Q(\d+)\*\*", re.MULTILINE)
_STEP = re.compile(r"^(\d+)\.\s", re.MULTILINE)
# one or more "§..." references after a mention of method.md, joined by ",", ";", "/", "and" or whitespace
_CITATION_RUN = re.compile(
    r"method\.md`{0,2}\s*((?:(?:,|;|/|\band\b)?\s*§\s*\d+(?:\.\d+)*"
    r"(?:\s+(?:Q\d+|steps?\s+\d+(?:\s*(?:,|-|–|and)\s*\d+)*))*)+)"
)
_ONE_REFERENCE = re.compile(
    r"§\s*(\d+(?:\.\d+)*)((?:\s+(?:Q\d+|steps?\s+\d+(?:\s*(?:,|-|–|and)\s*\d+)*))*)"
)


class MethodIndex(NamedTuple):
    sections: Set[str]
    quirks: Set[int]
    steps: Dict[str, Set[int]]  # section -> numbers of its unindented numbered list items


class Citation(NamedTuple):
    where: str
    section: str
    quirks: Tuple[int, ...]
    steps: Tuple[int, ...]


def _section_body(text: str, number: str) -> str:
    """Text from the heading of section ``number`` to the next heading (of any level)."""
    level = "##" if "." not in number else "###"
    start = re.search(rf"^{level}\s+{re.escape(number)}[.\s].*$", text, re.MULTILINE)
    if start is None:
        return ""
    stop = re.compile(r"^#{2,3}\s", re.MULTILINE).search(text, start.end())
    return text[start.end() : stop.start() if stop else len(text)]


def index_method_document(text: str) -> MethodIndex:
    sections = {match.group(2).rstrip(".") for match in _HEADING.finditer(text)}
    quirks = {int(q) for q in _QUIRK.findall(_section_body(text, "15"))}
    steps = {number: {int(s) for s in _STEP.findall(_section_body(text, number))} for number in sections}
    return MethodIndex(sections, quirks, steps)


def _numbers(spec: str) -> List[int]:
    """``"6"`` -> [6]; ``"7 and 8"`` / ``"7, 8"`` -> [7, 8]; ``"4-6"`` -> [4, 5, 6]."""
    spec = spec.replace("–", "-")
    numbers: List[int] = []
    for part in re.split(r"\s*(?:,|and)\s*", spec.strip()):
        if "-" in part:
            low, high = (int(x) for x in part.split("-"))
            numbers.extend(range(low, high + 1))
        elif part:
            numbers.append(int(part))
    return numbers


def find_citations(source: str, where: str) -> List[Citation]:
    citations = []
    for run in _CITATION_RUN.finditer(source):
        line = source.count("\n", 0, run.start()) + 1
        for ref in _ONE_REFERENCE.finditer(run.group(1)):
            tail = ref.group(2)
            quirks = tuple(int(q) for q in re.findall(r"Q(\d+)", tail))
            steps = tuple(n for spec in re.findall(r"steps?\s+([\d\s,\-–and]+)", tail) for n in _numbers(spec))
            citations.append(Citation(f"{where}:{line}", ref.group(1), quirks, steps))
    return citations


def unresolved(citations: Iterable[Citation], index: MethodIndex) -> List[str]:
    problems = []
    for c in citations:
        if c.section not in index.sections:
            problems.append(f"{c.where}: §{c.section} is not a heading of docs/method.md")
        problems += [f"{c.where}: §{c.section} Q{q} is not a quirk of §15" for q in c.quirks if q not in index.quirks]
        if c.quirks and c.section != "15":
            problems.append(f"{c.where}: quirks are numbered in §15, not §{c.section}")
        known_steps = index.steps.get(c.section, set())
        problems += [f"{c.where}: step {s} is not in the numbered list of §{c.section}" for s in c.steps if s not in known_steps]
    return problems


def _python_files() -> List[Path]:
    return sorted(p for folder in SCANNED_FOLDERS if (ROOT / folder).is_dir() for p in (ROOT / folder).rglob("*.py"))


@pytest.fixture(scope="module")
def method_index() -> MethodIndex:
    assert METHOD_DOC.is_file(), f"{METHOD_DOC} is missing"
    return index_method_document(METHOD_DOC.read_text(encoding="utf-8"))


_FAKE_DOC = """# title
## 1. One
### 1.1 Sub
## 7. DACS
### 7.2 Step
1. **EMA.**
   details
   1. not a step (nested)
2. **Debug.**
## 15. Quirks
* **Q1** — first
* **Q2** — second
## 16. Open
1. **not a step**: outside 7.2
"""


def test_parser_finds_headings_quirks_and_steps():
    index = index_method_document(_FAKE_DOC)
    assert index.sections == {"1", "1.1", "7", "7.2", "15", "16"}
    assert index.quirks == {1, 2}
    assert index.steps["7.2"] == {1, 2}
    assert index.steps["16"] == {1}
    assert index.steps["1.1"] == set()


def test_parser_reports_missing_sections_quirks_and_steps():
    source = (
        '"""See ``docs/method.md §1.1`` and docs/method.md §15 Q2, §7.2 steps 1 and 2.\n'
        "Missing: docs/method.md §1.2; method.md §15 Q3; docs/method.md §7.2 step 3; method.md §9.\n"
        'Wrong place: docs/method.md §1 Q1; docs/method.md §1.1 step 1."""\n'
    )
    citations = find_citations(source, "fake.py")
    assert [(c.section, c.quirks, c.steps) for c in citations] == [
        ("1.1", (), ()),
        ("15", (2,), ()),
        ("7.2", (), (1, 2)),
        ("1.2", (), ()),
        ("15", (3,), ()),
        ("7.2", (), (3,)),
        ("9", (), ()),
        ("1", (1,), ()),
        ("1.1", (), (1,)),
    ]
    problems = unresolved(citations, index_method_document(_FAKE_DOC))
    assert problems == [
        "fake.py:2: §1.2 is not a heading of docs/method.md",
        "fake.py:2: §15 Q3 is not a quirk of §15",
        "fake.py:2: step 3 is not in the numbered list of §7.2",
        "fake.py:2: §9 is not a heading of docs/method.md",
        "fake.py:3: quirks are numbered in §15, not §1",
        "fake.py:3: step 1 is not in the numbered list of §1.1",
    ]


def test_step_ranges_and_bare_paragraph_signs():
    citations = find_citations("docs/method.md §7.2 steps 4-6. A bare §3 is not a method.md citation.", "x.py")
    assert [(c.section, c.steps) for c in citations] == [("7.2", (4, 5, 6))]


def test_method_document_keeps_the_reference_numbering(method_index: MethodIndex):
    top = {s for s in method_index.sections if "." not in s}
    # §18: the Table 2 methods, §19: VFM-UDA model, §20: VFM-UDA++ model, §21: VFM solver and WildDash 2,
    # §22: the VFM-UDA iteration, §23: deployment
    assert top == {str(n) for n in range(1, 24)}, sorted(top, key=float)
    for sub in ("4.6", "5.3", "7.2", "8.4", "10.3", "11.4", "12.3", "17.5", "18.4", "18.9", "19.4", "20.1", "21.3",
                "22.5", "23.3"):
        assert sub in method_index.sections, sub
    assert method_index.quirks == set(range(1, 21))
    assert method_index.steps["7.2"] == set(range(1, 12)), "the DACS iteration is steps 1..11 of §7.2"


def test_every_method_citation_in_the_code_resolves(method_index: MethodIndex):
    citations: List[Citation] = []
    for path in _python_files():
        citations += find_citations(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    problems = unresolved(citations, method_index)
    assert not problems, "\n".join(problems)


def test_package_does_not_cite_the_external_reference():
    offenders: Dict[str, int] = {}
    for path in sorted((ROOT / "hrda_d2").rglob("*.py")):
        count = path.read_text(encoding="utf-8").count("hrda_reference.md")
        if count:
            offenders[str(path.relative_to(ROOT))] = count
    assert not offenders, f"cite docs/method.md instead of hrda_reference.md in: {offenders}"
