"""File formats the data code reads: the image file extensions (case-insensitive) that image
folders and benchmark folders are scanned for."""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff", ".gif")
