"""DnCNN denoising: patch data, the paper's trainer, its command, the PSNR evaluation."""
