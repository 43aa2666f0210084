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

Every line on the console is the tool's own unless -v (or --verbosity) asks
for the libraries' logs: `prepare_process`, which the package's
`__init__` calls when a tool starts, quiets TensorFlow's C++ logs before
any tool imports TensorFlow and keeps JAX from loading the TPU runtime on a
host without a TPU; `run` keeps the Python libraries' INFO logs (orbax,
JAX) off, except a backend that would not start on a host that has it.
"""

import atexit
import difflib
import gc
import glob
import importlib.metadata
import logging as std_logging
import os
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

# Set (where the user has not) before TensorFlow loads, unless -v is given:
# its C++ INFO and WARNING lines (JAX reads the same variable) and the
# notice about oneDNN's custom operations, which it prints whatever the
# level while they are on. They speed up TensorFlow's convolutions and
# matrix products; TensorFlow only reads data here.
QUIET_ENVIRONMENT = {'TF_CPP_MIN_LOG_LEVEL': '2', 'TF_ENABLE_ONEDNN_OPTS': '0'}

# What says a host has a TPU, as JAX and the TPU runtime look for one: TPU
# VM environment variables, device files (v2-v4 through /dev/accel*, v5 and
# later through VFIO), and Google's PCI vendor id with a TPU device id.
_TPU_ENVIRONMENT = ('TPU_ACCELERATOR_TYPE', 'TPU_WORKER_HOSTNAMES',
                    'JAX_FORCE_TPU_INIT')
_GOOGLE_PCI_VENDOR = '0x1ae0'
_TPU_PCI_DEVICES = ('0x0027', '0x0056', '0x005e', '0x0062', '0x0063',
                    '0x006f', '0x0076')

# GPU platforms by the device files that show one, as JAX looks for them.
_GPU_DEVICES = {'cuda': ('/dev/nvidia0', '/dev/nvidiactl', '/dev/dxg'),
                'rocm': ('/dev/kfd',)}

# The JAX logger that reports a backend which did not start (at INFO).
_BACKEND_LOGGER = 'jax._src.xla_bridge'

# --config, defined here, belongs to the tool that calls config_flag (its
# --helpshort lists it).
flags.disclaim_key_flags()


def prepare_process(argv: Sequence[str]) -> None:
  """Before a tool imports TensorFlow or starts JAX: quiets TensorFlow's
  C++ logs (unless `argv` asks for -v) and names the platforms JAX starts
  (`jax_platforms`)."""
  if not verbose(argv):
    for key, value in QUIET_ENVIRONMENT.items():
      os.environ.setdefault(key, value)
  platforms = jax_platforms()
  if platforms:
    os.environ['JAX_PLATFORMS'] = platforms


def verbose(argv: Sequence[str]) -> bool:
  """Whether `argv` asks for the libraries' logs: -v/--verbosity >= 0."""
  for i, arg in enumerate(argv):
    match = re.fullmatch(r'--?(?:v|verbosity)(?:=(.*))?', arg)
    if match:
      value = match.group(1) if match.group(1) is not None else (
          argv[i + 1] if i + 1 < len(argv) else '')
      try:
        return int(value) >= 0
      except ValueError:
        return True  # absl's parser says what is wrong with it.
  return False


def jax_platforms() -> str | None:
  """The platforms JAX should start here, or None to leave JAX's choice.

  A user's JAX_PLATFORMS and a host with a TPU keep JAX's choice. Elsewhere
  JAX would load an installed TPU runtime, which looks for a TPU and logs a
  dozen lines about not finding one: it gets the host's GPU platforms
  (where a JAX plugin for them is installed) and the CPU instead. A GPU
  without its plugin keeps JAX's choice too, so JAX's warning that it
  cannot use the GPU shows.
  """
  if 'JAX_PLATFORMS' in os.environ or host_has_tpu():
    return None
  gpus = [platform for platform, paths in _GPU_DEVICES.items()
          if any(os.path.exists(path) for path in paths)]
  plugins = [entry.name for entry in
             importlib.metadata.entry_points(group='jax_plugins')]
  if not all(any(gpu in plugin for plugin in plugins) for gpu in gpus):
    return None
  return ','.join([*gpus, 'cpu'])


def host_has_tpu() -> bool:
  """Whether this host has (or is told it has) a TPU."""
  if any(os.environ.get(key) for key in _TPU_ENVIRONMENT):
    return True
  if glob.glob('/dev/accel*'):
    return True
  google = [os.path.dirname(path) for path in
            glob.glob('/sys/bus/pci/devices/*/vendor')
            if _read(path) == _GOOGLE_PCI_VENDOR]
  return any(_read(os.path.join(device, 'device')) in _TPU_PCI_DEVICES
             for device in google) or bool(
                 google and glob.glob('/dev/vfio/[0-9]*'))


def _read(path: str) -> str:
  try:
    with open(path) as f:
      return f.read().strip()
  except OSError:
    return ''


def quiet_library_logs() -> None:
  """Python logs at WARNING and above only, unless -v was given: orbax alone
  logs some twenty INFO lines per checkpoint. JAX's note that a backend did
  not start stays, as one warning line (a TPU that failed to start falls
  back to the CPU otherwise unseen)."""
  if flags.FLAGS['verbosity'].present and flags.FLAGS.verbosity >= 0:
    return
  logging.set_verbosity(logging.WARNING)
  backend_logger = std_logging.getLogger(_BACKEND_LOGGER)
  backend_logger.setLevel(std_logging.INFO)
  backend_logger.addFilter(_backend_failures_as_warnings)


def _backend_failures_as_warnings(record: std_logging.LogRecord) -> bool:
  """Keeps, as a one-line WARNING, JAX's INFO that a backend did not start;
  drops the logger's other records below WARNING."""
  message = record.getMessage()
  if not message.startswith('Unable to initialize backend'):
    return record.levelno >= std_logging.WARNING
  record.msg, record.args = message.splitlines()[0], ()
  record.levelno, record.levelname = std_logging.WARNING, 'WARNING'
  return True


def hide_gpus_from_tensorflow() -> None:
  """TensorFlow only reads data here: it gets no GPU, so it takes none of
  the GPU memory JAX needs. Called as a tool starts, after its imports and
  before TensorFlow runs anything; a tool that never imports TensorFlow
  never loads it for this."""
  tf = sys.modules.get('tensorflow')
  if tf is not None:
    tf.config.set_visible_devices([], 'GPU')


def run(main: Callable[[list[str], Flags], None],
        define_flags: Callable[[], Flags], *, required: Sequence[str] = (),
        errors: tuple[type[Exception], ...] = (ValueError, OSError)) -> None:
  """Runs a tool: `main(argv, flag)` with the flags `define_flags` returns.

  Defines the flags, marks `required` ones, parses with `_parse_flags`,
  quiets the libraries' logs unless -v is given, hides GPUs from
  TensorFlow, and turns any of `errors`
  raised by `main` into `error: MESSAGE` on stderr and exit status 1 (with
  the traceback logged at -v=1).
  """
  flag = define_flags()
  flags.mark_flags_as_required(list(required))

  def main_or_error(argv: list[str]) -> None:
    quiet_library_logs()
    hide_gpus_from_tensorflow()
    # The interpreter's last garbage collection, at exit, walks every object
    # JAX, TensorFlow and orbax made (about 2 s of each program here). Tools
    # close what they write before returning, so those objects go to the OS
    # uncollected.
    atexit.register(gc.freeze)
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
