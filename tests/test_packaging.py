"""What the package installs: `alexnet_jax` alone, which never imports the
repository's experiment files."""

import ast
import configparser
import pathlib

import setuptools

REPO = pathlib.Path(__file__).resolve().parent.parent


def _installed_packages() -> list[str]:
  """The packages `pip install .` installs, as setup.cfg selects them."""
  setup = configparser.ConfigParser()
  setup.read(REPO / 'setup.cfg')
  include = setup['options.packages.find']['include'].split()
  return setuptools.find_packages(str(REPO), include=include)


def test_only_alexnet_jax_is_installed():
  packages = _installed_packages()
  assert {'alexnet_jax', 'alexnet_jax.data'} <= set(packages)
  assert {p.split('.')[0] for p in packages} == {'alexnet_jax'}


def _imported_modules(path: pathlib.Path) -> set[str]:
  """Every module `path` imports, at the top or inside a function."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
  return names


def test_the_library_never_imports_experiment_files():
  for path in (REPO / 'alexnet_jax').rglob('*.py'):
    tops = {name.split('.')[0] for name in _imported_modules(path)}
    assert not tops & {'configs', 'benchmarks', 'tests'}, path
