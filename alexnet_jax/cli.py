"""How every tool of the package runs as a program.

Each `python -m alexnet_jax.<tool>` has a `define_flags()` that defines its
flags (--config through `config_flag`) and returns them by name, and a
`main(argv, flag)`; its `__main__` block is `cli.run(main, define_flags,
...)`. Flags are defined only when a module runs as a program, so any tools
can be imported together (several share flag names such as --config and
--out).

`run` parses with a one-line error for a `--config.KEY=VALUE` override the
config lacks: ml_collections raises a KeyError or an AttributeError from
inside absl's flag parsing there, which surfaces as a traceback. The check
needs --config on the command line: a flag with a default config file and
none given applies the overrides when it is defined, before any parser
runs. `run` also turns the errors a tool expects (bad input, a missing or
unwritable file) into one line, `error: MESSAGE`, and exit status 1.
"""

import difflib
import re
import sys
from typing import Any, Callable, NoReturn, Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_dict
from ml_collections import config_flags

# A tool's flags by name, as its define_flags() returns them.
Flags = dict[str, flags.FlagHolder]

CONFIG_FLAG = 'config'

# --config, defined here, belongs to the tool that calls config_flag (its
# --helpshort lists it).
flags.disclaim_key_flags()


def run(main: Callable[[list[str], Flags], None],
        define_flags: Callable[[], Flags], *, required: Sequence[str] = (),
        errors: tuple[type[Exception], ...] = (ValueError, OSError)) -> None:
  """Runs a tool: `main(argv, flag)` with the flags `define_flags` returns.

  Defines the flags, marks `required` ones, parses with `_parse_flags`, and
  turns any of `errors` raised by `main` into `error: MESSAGE` on stderr
  and exit status 1 (with the traceback logged at -v=1).
  """
  flag = define_flags()
  flags.mark_flags_as_required(list(required))

  def main_or_error(argv: list[str]) -> None:
    try:
      main(argv, flag)
    except errors as error:
      logging.debug('full traceback', exc_info=True)
      _exit_with_error(error)

  app.run(main_or_error, flags_parser=_parse_flags)


def config_flag(default: str | None = None,
                help_text: str = 'Experiment config file.', *,
                lock_config: bool = True) -> flags.FlagHolder:
  """Defines --config, the file whose --config.KEY overrides `run` checks."""
  return config_flags.DEFINE_config_file(CONFIG_FLAG, default, help_text,
                                         lock_config=lock_config)


def unknown_key(config: Any, path: str) -> str | None:
  """Why dotted `path` is not a field of `config`, or None if it is one.

  The message names the override as typed and, when one is close, the
  same path with the first unknown part replaced by its closest field,
  preferring fields under which the rest of the path exists.
  """
  node, parts = config, path.split('.')
  for depth, part in enumerate(parts):
    fields = (list(node.keys()) if isinstance(node, config_dict.ConfigDict)
              else [])
    if part in fields:
      node = node[part]
      continue
    override = f'--{CONFIG_FLAG}.{path}'
    if not fields:
      parent = '.'.join([CONFIG_FLAG, *parts[:depth]])
      return f'{override}: {parent} has no fields'
    fixes = ['.'.join([*parts[:depth], match, *parts[depth + 1:]])
             for match in difflib.get_close_matches(part, fields, n=3)]
    fixes.sort(key=lambda fixed: unknown_key(config, fixed) is not None)
    message = f'{override}: no such config key'
    if fixes:
      message += f'; did you mean --{CONFIG_FLAG}.{fixes[0]}?'
    return message
  return None


def _config(argv: list[str]) -> Any:
  """The config file named by --config in argv, or None."""
  for i, arg in enumerate(argv):
    match = re.fullmatch(rf'--?{CONFIG_FLAG}(=(.*))?', arg)
    if match:
      path = match.group(2) if match.group(1) else (argv[i + 1:] or [None])[0]
      return flags.FLAGS[CONFIG_FLAG].parser.parse(path) if path else None
  return None


def _override_paths(argv: list[str]) -> list[str]:
  """The dotted keys of every --config.KEY[=VALUE] (or --noconfig.KEY)."""
  return [match.group(1) for arg in argv if (match := re.match(
      rf'--?(?:no)?{CONFIG_FLAG}\.([^=]+)', arg))]


def _first_unknown_override(argv: list[str]) -> str | None:
  """The message for the first override the config file lacks, if any."""
  if CONFIG_FLAG not in flags.FLAGS:
    return None
  argv = flags.FLAGS.read_flags_from_files(argv[1:], force_gnu=False)
  config = _config(argv)
  if config is None:
    return None
  for key in _override_paths(argv):
    message = unknown_key(config, key)
    if message:
      return message
  return None


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flags parser for `app.run`, with one line for a bad key.

  Parses as `app.run` does by default; where an override names a field
  the config lacks, prints `error: ...` to stderr and exits with status 1.
  """
  try:
    return app.parse_flags_with_usage(argv)
  except (KeyError, AttributeError, TypeError):
    message = _first_unknown_override(argv)
    if message is None:
      raise
  _exit_with_error(message)


def _exit_with_error(message: Any) -> NoReturn:
  """Prints `error: MESSAGE` to stderr and exits with status 1."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(1)
