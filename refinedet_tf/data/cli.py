"""Flag parsing of the in-process data commands (`prepare`, `inspect`): their own FlagValues,
not absl's global FLAGS, so that `run(argv)` can be called from Python and tests."""

from __future__ import annotations

from absl import flags


def parse_flags(argv, define_flags, doc, required, program, usage, stdout, stderr):
    """-> (parsed FlagValues, None), or (None, exit status) after printing help (0) or the
    problem, prefixed with `program`, and `usage` (2). `required` names flags that must be given."""
    fv = flags.FlagValues()
    define_flags(fv)
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        stdout.write(doc + "\nflags:\n" + fv.get_help() + "\n")
        return None, 0
    try:
        fv(list(argv))
        for name in required:
            if not fv[name].value:
                raise flags.Error(f"--{name} is required")
    except flags.Error as e:
        stderr.write(f"{program}: {e}\nusage: {usage}\n")
        return None, 2
    return fv, None
