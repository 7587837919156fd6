"""Loading trained generators and sampling from them (land-cover maps, preview grids); never imports ``train``."""
