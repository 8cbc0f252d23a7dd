"""camsam's GPU side: the classifier, Grad-CAM, prompts, SAM2 and the stages around them.

Every model lives here; the web side (``ml_backend``) reaches this package only through the queue.
"""

__version__ = "0.1.0"
