"""Dataset mappers: source / target training pipelines and the test pipeline."""
