import subprocess
import sys

from terrasynth.cli import build_parser


def _subcommands(parser, prefix=()):
    for action in parser._actions:
        if getattr(action, "choices", None) and hasattr(action, "_name_parser_map"):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _subcommands(sub, (*prefix, name))


def test_every_command_has_help():
    parser = build_parser()
    cmds = list(_subcommands(parser))
    assert ("data", "info") in [c for c, _ in cmds]
    for cmd, sub in cmds:
        assert sub.format_help().strip(), cmd


def test_module_entry_help_and_one_line_errors(tmp_path):
    r = subprocess.run([sys.executable, "-m", "terrasynth", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "data" in r.stdout
    r = subprocess.run([sys.executable, "-m", "terrasynth", "data", "info", str(tmp_path / "nope")],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "nope" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "terrasynth", "data", "info"], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_command_modules_do_not_import_the_entry_point():
    """cli.py loads the command modules; a command module importing cli back is a hidden cycle."""
    code = (
        "import sys, importlib\n"
        "from terrasynth.cli_base import CLI\n"
        "mods = ['data', 'spade', 'controlnet', 'synthesize', 'realism', 'segment', 'acquire', 'landcover', 'pipeline']\n"
        "for m in mods: importlib.import_module('terrasynth.commands.' + m)\n"
        "assert 'terrasynth.cli' not in sys.modules, 'a command module imports terrasynth.cli'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_dataset_writer_defines_its_pickle_hooks_once():
    import ast
    import inspect

    import terrasynth.data.dataset as mod

    tree = ast.parse(inspect.getsource(mod.DatasetWriter))
    names = [n.name for n in tree.body[0].body if isinstance(n, ast.FunctionDef)]
    assert names.count("__getstate__") == 1 and names.count("__setstate__") == 1
