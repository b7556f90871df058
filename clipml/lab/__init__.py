"""The offline lab: a procedural multi-label world and the toy CLIPs trained on it.

No real CLIP weights or COCO/VOC images can be had offline, so method quality is measured
here: `world` renders scenes with exact object masks, `shapes` draws the object classes,
`toyclip` trains and loads the small CLIP towers that see only this world.
"""
