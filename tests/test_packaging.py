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


# The layers, lowest first: a module may import its own layer and those
# below it, and a program no other program. The library includes `data/`;
# `main` is the entry point, which wires library and analysis together.
LAYERS = ('library', 'analysis', 'main', 'tools')
# Imports that may wait until a function needs them: optional or heavy
# dependencies that not every use of a module needs (flax's TensorBoard
# writer and the PyTorch reference net pull in TensorFlow and torch).
# google.cloud and google.api_core: needed only where a workdir is a bucket.
OPTIONAL = ('torch', 'tensorflow', 'tensorflow_datasets', 'libtpu',
            'matplotlib', 'flax.metrics', 'alexnet_jax.torch_reference',
            'google.cloud', 'google.api_core')


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _layer(module: str) -> str:
  parts = module.split('.')
  if len(parts) > 1 and parts[1] in ('analysis', 'tools'):
    return parts[1]
  return 'main' if module == 'alexnet_jax.main' else 'library'


def _package_imports(path: pathlib.Path) -> set[str]:
  """The package's modules that `path` imports (`from alexnet_jax.x import
  y` names module `alexnet_jax.x.y` where that is a module)."""
  modules = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and (
        node.module.startswith('alexnet_jax')):
      for alias in node.names:
        sub = f'{node.module}.{alias.name}'
        modules.add(sub if _path_of(sub) else node.module)
    elif isinstance(node, ast.Import):
      modules.update(a.name for a in node.names
                     if a.name.startswith('alexnet_jax'))
  return modules - {'alexnet_jax'}


def _path_of(module: str) -> pathlib.Path | None:
  base = REPO.joinpath(*module.split('.'))
  for path in (base.with_suffix('.py'), base / '__init__.py'):
    if path.exists():
      return path
  return None


def _import_graph() -> dict[str, set[str]]:
  return {_module_name(path): _package_imports(path)
          for path in (REPO / 'alexnet_jax').rglob('*.py')}


def test_the_layout_has_the_three_layers():
  layers = {_layer(module) for module in _import_graph()}
  assert set(LAYERS) == layers


def test_imports_point_down_the_layers():
  for module, imports in _import_graph().items():
    rank = LAYERS.index(_layer(module))
    for imported in imports:
      assert LAYERS.index(_layer(imported)) <= rank, (module, imported)
      if _layer(module) == 'tools':
        assert _layer(imported) != 'tools', (module, imported)


def test_data_imports_no_analysis_and_no_program():
  for module, imports in _import_graph().items():
    if module.startswith('alexnet_jax.data'):
      for imported in imports:
        assert _layer(imported) == 'library', (module, imported)


def test_the_import_graph_has_no_cycle():
  graph = _import_graph()
  done, on_path = set(), []

  def visit(module):
    assert module not in on_path, ' -> '.join(on_path + [module])
    if module in done:
      return
    on_path.append(module)
    for imported in graph.get(module, ()):
      visit(imported)
    on_path.pop()
    done.add(module)

  for module in graph:
    visit(module)


def test_configs_never_import_a_program():
  for path in (REPO / 'configs').rglob('*.py'):
    for module in _imported_modules(path):
      assert not module.startswith(('alexnet_jax.tools', 'alexnet_jax.main')
                                   ), (path, module)


def test_imports_inside_functions_are_optional_dependencies_only():
  for path in (REPO / 'alexnet_jax').rglob('*.py'):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        for inner in ast.walk(node):
          if isinstance(inner, ast.Import):
            names = [a.name for a in inner.names]
          elif isinstance(inner, ast.ImportFrom):
            names = [f'{inner.module}.{a.name}' for a in inner.names]
          else:
            continue
          for name in names:
            assert name.startswith(OPTIONAL), (path.name, name)
