"""`python -m alexnet_jax.prepare`: stores base images as JPEG shards.

See `alexnet_jax/data/prepare.py`.
"""

from alexnet_jax.data import prepare

if __name__ == '__main__':
  prepare.run()
