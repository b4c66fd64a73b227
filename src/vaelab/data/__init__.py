"""Datasets: where they come from (``sources``), how they are read (``idx``), how they are served (``datamodule``)."""
