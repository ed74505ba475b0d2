"""Bundles: a trial as a directory someone can deploy from (``bundle``: the one writer and reader),
the quality it promises (``quality``), ``predict.py`` (``predict_template``) and ``workbench
export RUN_DIR`` (``run``). Imported by the kserve engine's own environment: nothing heavy here."""
