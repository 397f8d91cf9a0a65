"""Data: datasets -> dataset mappers -> samplers/loaders. Importing registers the datasets."""
from . import datasets  # noqa: F401
