"""camsam's web side: Label Studio's ML backend protocol. Imports no torch."""
