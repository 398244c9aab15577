"""Data: the sample schema, the content-addressed image store, source readers, row
normalisation and the ingest stage that ties them together.

Flow of one row: readers.iter_rows -> normalize.normalize_row (-> images.ImageStore) -> a
schema.Sample in the task's samples file, or a quarantine record with a reason.
"""
