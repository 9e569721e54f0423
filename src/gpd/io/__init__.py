"""What gpd writes and reads on disk, each module with one job.

* :mod:`gpd.io.atomic`: the one atomic write (temporary file beside the target, fsync,
  rename; permissions of a plain ``open()``);
* :mod:`gpd.io.layout`: :class:`~gpd.io.layout.RunLayout`, the name of every file of a run
  directory (and of a report folder);
* :mod:`gpd.io.metrics`: metrics.csv, one row per epoch;
* :mod:`gpd.io.checkpoint`: the training checkpoint's format, written and read by one pair;
* :mod:`gpd.io.student`: the student.pt format, and loading weights from files;
* :mod:`gpd.io.convert`: student.pt to .pt, .safetensors or .onnx.

The package sits low in gpd's layers (beside models and data): it imports torch, the
utilities and the model registry, never the training engine or the command line. This
file imports nothing, so that importing one module does not import the others.
"""
