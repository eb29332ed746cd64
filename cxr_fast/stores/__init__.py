"""Decode-once stores: what a loader backend reads every epoch instead of decoding PNGs.

A store is a folder::

    manifest.json           what it holds: image ids, labels, split, the source files' sizes and
                            mtimes, the pixel rule (``data.pixels.RULE``), formats and resolutions
                            done, images that could not be read or used, and every finished file's
                            size, sha256 and mtime (``files``)
    jpeg/<entry>.jpg        8-bit gray JPEG at source size (DALI's ``mixed`` decoder decodes these on a
    jpeg/files.txt          GPU; it decodes PNG on the CPU even in mixed mode) and DALI's file list
    cache/<res>.npy         N x res x res uint8, the reference resize (``data.resize``) rounded;
                            opened memory-mapped
    ffcv/<res>.beton        FFCV: the same uint8 pixels as a one-channel ``NDArrayField`` (see
                            ``stores.ffcv.write_beton``), with the label and the store position
    .lock                   held by the one process writing the store

Every file appears by an atomic rename, so a killed run leaves no half file under its final name (a cache
resolution in progress is ``<res>.npy.partial`` plus ``<res>.state.npy``, which the next run resumes).

Modules, bottom to top (none imports ``cxr_fast.loaders``, which open stores through ``manifest``
and name formats by their modules' ``FORMAT``):

    files       sha256 and the manifest's record of a file, for every part
    jpeg        the ``jpeg`` format: its paths, the JPEG encode, DALI's file list
    cache       the ``cache`` format: its paths, the ``.npy`` header check, the resumable fill (``CacheJob``)
    ffcv        the ``ffcv`` format: its paths, ``write_beton`` in a child process bounded by a timeout
    manifest    the opened ``Store``, ``open_store`` and the checks before anything in a store is trusted
    decode      one decode per image, from files or streamed archives, into every part still missing
    prepare     ``prepare_store`` (locked, repairing, resumable), ``ensure_store``, ``prepare_subsample``
"""
