"""The README's command line at a glance is the command line: its usage lines name every option of each command,
and only options that exist (checked against the commands' Click parameters, which typer builds: typer >= 0.2x
carries its own copy of Click, so the objects are matched by what they have, not by class). The usage lines in
docs/ may show a subset, but never an option that does not exist."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

from personalive_trt.cli import app

REPO = Path(__file__).resolve().parents[1]
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def commands() -> dict:
    """``"run"``, ``"weights check"``, ... -> the Click command."""
    found = {}

    def walk(group, prefix: str) -> None:
        for name, command in group.commands.items():
            if hasattr(command, "commands"):  # a group of commands
                walk(command, f"{prefix}{name} ")
            else:
                found[f"{prefix}{name}"] = command

    walk(typer.main.get_command(app), "")
    return found


def usage_lines(text: str) -> list[str]:
    """Every ``personalive-trt ...`` line of the fenced ``bash`` blocks, continuation lines joined."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("personalive-trt "):
                lines.append(" ".join(line.split()))
    return lines


def by_command(lines: list[str], names) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in lines:
        words = line.split()[1:]
        name = " ".join(words[:2]) if " ".join(words[:2]) in names else words[0]
        found.setdefault(name, []).append(line[len("personalive-trt " + name):])
    return found


def options_of(command) -> set[str]:
    return {o for p in command.params if p.param_type_name == "option" for o in p.opts if o.startswith("--")}


def readme_glance() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## The command line at a glance", 1)[1].split("\n## ", 1)[0]
    return usage_lines(section)


def test_the_glance_has_a_usage_line_for_every_command():
    assert set(by_command(readme_glance(), commands())) == set(commands())


@pytest.mark.parametrize("name", sorted(commands()))
def test_readme_usage_lines_name_exactly_the_options_of_the_command(name):
    command = commands()[name]
    shown = {o for rest in by_command(readme_glance(), commands())[name] for o in OPTION.findall(rest)}
    assert shown - options_of(command) == set(), f"the README shows options `{name}` does not have"
    assert options_of(command) - shown == set(), f"the README's usage of `{name}` leaves these options out"
    for argument in (p for p in command.params if p.param_type_name == "argument"):
        placeholders = [w for rest in by_command(readme_glance(), commands())[name] for w in rest.split()
                        if re.fullmatch(r"\[?[A-Z]+\]?", w)]
        assert placeholders, f"the README's usage of `{name}` does not show its argument {argument.name}"
        assert placeholders[0].startswith("[") == (not argument.required), (name, placeholders[0])


def test_docs_usage_lines_show_only_options_that_exist():
    names = commands()
    wrong = []
    for page in sorted((REPO / "docs").glob("*.md")):
        for name, rests in by_command(usage_lines(page.read_text()), names).items():
            assert name in names, f"{page.name}: `personalive-trt {name}` is not a command"
            unknown = {o for rest in rests for o in OPTION.findall(rest)} - options_of(names[name])
            wrong += [f"{page.name}: {name} {option}" for option in sorted(unknown)]
    assert wrong == []
