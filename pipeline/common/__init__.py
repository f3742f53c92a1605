"""The lowest stage, what every other may use: image decoding, resizing and encoding (`images`), images
named by path or `skimage:<name>` (`image_files`), and the process's allocator setting (`memory`). It
imports no other stage."""
