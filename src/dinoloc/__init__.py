"""dinoloc: do DINO ViTs pretrained elsewhere predict protein localization in OpenCell images?"""

__version__ = "0.1.0"
