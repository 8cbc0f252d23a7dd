"""Class activation maps: where the classifier looked when it said a class is present.

Each method is a :class:`worker.pipeline.cam.base.CamMethod` subclass, named here by dotted path
(reading the names imports no torch). Grad-CAM, the default, is camsam's own one-pass version
(:mod:`worker.pipeline.cam.gradcam`); the others come from pytorch-grad-cam
(:mod:`worker.pipeline.cam.library`). A new method is one file, one line here and its test
(``docs/architecture.md``).
"""

from __future__ import annotations

CAM_METHODS = {
    "gradcam": "worker.pipeline.cam.gradcam.GradCam",
    "gradcam++": "worker.pipeline.cam.library.GradCamPlusPlus",
    "layercam": "worker.pipeline.cam.library.LayerCam",
    "xgradcam": "worker.pipeline.cam.library.XGradCam",
    "eigencam": "worker.pipeline.cam.library.EigenCam",
    "scorecam": "worker.pipeline.cam.library.ScoreCam",
}
