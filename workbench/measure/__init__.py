"""How numbers are taken: the timing protocol, several candidates interleaved, what an artifact is
besides its time, the reuse of identical measurements, a monitor of a served process, and the
``workbench bench`` check of the timing loop itself."""
