"""Models: backbone -> meta-architecture -> heads. Importing registers them with Detectron2."""
from . import backbone, heads, meta_arch  # noqa: F401
