"""Video decoding, optical / warp flow, motion maps and dataset preparation (``fpar.video``)."""
