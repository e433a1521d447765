"""The synthetic human-action world: the embedded default dataset (no downloads).

Modules:

``world``     the deterministic numpy generator (humanoids as capsules, 12 actions, shared
              textured backgrounds, distractors, camera jitter, ``shortcut_strength``) rendering
              frames and LIP part-label maps from the same geometry
``generate``  writes a world folder: H.264 MP4 files, a ground-truth part-map store
              (:mod:`hcframe_video.partmaps`), split lists; atomic and bit-reproducible
``dataset``   ``synthetic_humans``, a :class:`~hcframe_video.clips.VideoClipDataset` that builds
              its world in the cache on first use and exposes ``ground_truth_parts()``
``show``      contact sheets (PNG/GIF) of clips with their part maps overlaid
``plugin``    registration and the ``hcframe make-synthetic`` / ``hcframe show`` commands
"""
