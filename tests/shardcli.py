"""Test helper: a make-shards command line from keyword options, so that a test's run fits on one line."""


def shards_argv(source: str, *extra: str, **options) -> list[str]:
    """`[source, --option value..., --no-progress, *extra]` for `shard_tools.cli.main` or a subprocess.

    An option's underscores become dashes and its value goes through str(): `videos_root=path` gives
    `--videos-root <path>`, `workers=0` gives `--workers 0`. `extra` is appended as it is (bare flags such as
    `--download`, or a test's further arguments).
    """
    argv = [source]
    for name, value in options.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    return [*argv, "--no-progress", *extra]
