"""Write docs/cli.md, the CLI reference, from the commands themselves.

Run after changing a command or an option (a test fails while docs/cli.md is stale):

    python docs/gen_cli.py

Each command's section is its usage, its docstring (the same text as ``--help``) and a table
of its arguments and options with their defaults, read from the Typer app, so the reference
cannot drift from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "cli.md"


def _commands():
    sys.path.insert(0, str(ROOT))
    from typer.main import get_command

    from pipeline.cli import app

    root = get_command(app)
    for name, cmd in root.commands.items():
        if hasattr(cmd, "commands"):  # a group: job run, job status, ...
            for sub_name, sub in cmd.commands.items():
                yield f"{name} {sub_name}", sub
        else:
            yield name, cmd


def _default(param) -> str:
    if param.required:
        return "required"
    value = param.default
    if getattr(param, "is_flag", False) and param.secondary_opts:
        return param.opts[0] if value else param.secondary_opts[0]
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    return str(value)


def render() -> str:
    """The whole of docs/cli.md."""
    lines = [
        "# rnnpipe command reference",
        "",
        "Generated from the commands by `python docs/gen_cli.py`; do not edit by hand.",
        "Every command also prints this with `--help`.",
        "",
    ]
    for name, cmd in _commands():
        lines += [f"## rnnpipe {name}", ""]
        args = " ".join(p.name.upper() + ("..." if p.nargs == -1 else "")
                        for p in cmd.params if p.param_type_name == "argument")  # fmt: skip
        lines += ["```", f"rnnpipe {name} [OPTIONS] {args}".rstrip(), "```", ""]
        doc = (cmd.help or "").strip()
        lines += [" ".join(part.split()) for part in doc.split("\n\n")]
        lines += ["", "| argument or option | default | what it is |", "|---|---|---|"]
        for p in cmd.params:
            names = " / ".join([*p.opts, *p.secondary_opts]) if p.param_type_name == "option" else (
                p.name.upper()
            )  # fmt: skip
            text = (p.help or "").replace("|", "\\|")
            default = _default(p).replace("|", "\\|")
            lines.append(f"| `{names}` | {'`' + default + '`' if default else ''} | {text} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT.relative_to(ROOT)}")
