"""Option precedence: default < pyproject.toml < config file < environment < command line."""

import pytest

from builders.cli import options_from_args
from console import cli
from tritune.errors import ConfigError


def _parse(argv, monkeypatch, tmp_path, env=None):
    monkeypatch.chdir(tmp_path)
    for key in list(__import__("os").environ):
        if key.startswith("TRITUNE_"):
            monkeypatch.delenv(key)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    parser, subparsers = cli.build_parser()
    from tritune import settings

    config = argv[argv.index("--config") + 1] if "--config" in argv else None
    subparsers["build"].set_defaults(**settings.layered_defaults("build", subparsers["build"], config))
    return options_from_args(parser.parse_args(argv))


def test_builtin_defaults(monkeypatch, tmp_path):
    opts = _parse(["build"], monkeypatch, tmp_path)
    assert opts.epochs == 12 and opts.variants == ("fp32", "pruned", "distilled", "fp16", "int8", "small", "tiny")


def test_each_layer_overrides_the_one_below(monkeypatch, tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        "[tool.tritune]\nseed = 7\n[tool.tritune.build]\nepochs = 3\nprune-ratio = 0.3\nsubset = 50\n"
        'variants = ["fp32", "int8"]\n'
    )
    (tmp_path / "tritune.toml").write_text("[build]\nepochs = 4\nprune_ratio = 0.4\n")
    env = {"TRITUNE_PRUNE_RATIO": "0.45", "TRITUNE_DOWNLOAD": "yes"}
    opts = _parse(["build", "--subset", "60"], monkeypatch, tmp_path, env)
    assert opts.seed == 7  # pyproject, top level
    assert opts.variants == ("fp32", "int8")  # pyproject, TOML array
    assert opts.epochs == 4  # config file beats pyproject
    assert opts.prune_ratio == 0.45  # environment beats config file
    assert opts.download is True
    assert opts.subset == 60  # command line beats everything


def test_explicit_config_file_replaces_the_default_one(monkeypatch, tmp_path):
    (tmp_path / "tritune.toml").write_text("[build]\nepochs = 4\n")
    (tmp_path / "other.toml").write_text("epochs = 9\n")
    assert _parse(["--config", "other.toml", "build"], monkeypatch, tmp_path).epochs == 9


@pytest.mark.parametrize(
    ("files", "env", "message"),
    [
        ({"tritune.toml": "[build\nepochs=1"}, {}, "not valid TOML"),
        ({"tritune.toml": "[build]\nepochz = 1\n"}, {}, "unknown option 'epochz'"),
        ({"tritune.toml": "[build]\nepochs = 'many'\n"}, {}, "not a valid value for --epochs"),
        ({}, {"TRITUNE_DATASET": "imagenet"}, "TRITUNE_DATASET.*one of auto, cifar10, fashion-mnist, digits"),
        ({}, {"TRITUNE_CONFIG": "missing.toml"}, "does not exist"),
    ],
)
def test_bad_settings_are_one_line_errors(monkeypatch, tmp_path, files, env, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        _parse(["build"], monkeypatch, tmp_path, env)


def test_main_prints_one_line_and_exits_2(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRITUNE_EPOCHS", "abc")
    assert cli.main(["build"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "TRITUNE_EPOCHS" in err


def test_a_subcommand_imports_only_its_own_module():
    """`tritune serve` must not pay for torch: the console imports the chosen subcommand's module only."""
    import subprocess
    import sys

    code = (
        "import sys; from console.cli import build_parser; build_parser('serve'); "
        "bad = [m for m in ('torch', 'builders.build', 'loadtest.run') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(("text", "expected"), [("false", False), ("0", False), ("yes", True), ("on", True)])
def test_an_on_off_option_reads_words_from_the_environment(monkeypatch, tmp_path, text, expected):
    """`--headroom/--no-headroom` from TRITUNE_HEADROOM: 'false' must turn it off, not count as a true string."""
    from tritune import settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRITUNE_HEADROOM", text)
    _, subparsers = cli.build_parser("orchestrate")
    assert settings.layered_defaults("orchestrate", subparsers["orchestrate"], None)["headroom"] is expected
