"""Decoding: the validity check on the bytes and the paper's base image.

`base_image` (shorter side to resize_size, centre square, uint8) is the one
definition of the base image: the raw path crops from it and
`alexnet_jax.tools.prepare` stores it.
"""

import tensorflow as tf

# tf.data runs each function it traces through autograph, which rewrites
# Python control flow on tensors into graph ops. Ours branch on Python
# values only, so the rewrite is wasted: about a second of each program's
# start. The functions that build our pipelines are `graph_only`, and so is
# everything traced while they run (tf.data reads the setting when a
# function is added, not when it runs).
graph_only = tf.autograph.experimental.do_not_convert

_JPEG_TAIL = 16_384
_MAGIC = {
    'jpeg': b'\xff\xd8\xff',
    'png': b'\x89PNG\r\n\x1a\n',
    'gif': b'GIF8',
    'bmp': b'BM',
}


def _has_magic(contents: tf.Tensor, magic: bytes, at: int = 0) -> tf.Tensor:
  """Whether `magic` occurs at byte `at` (False for shorter contents)."""
  head = tf.strings.join([tf.strings.substr(contents, 0, 16), b'\0' * 16])
  return tf.equal(tf.strings.substr(head, at, len(magic)), magic)


def is_jpeg(contents: tf.Tensor) -> tf.Tensor:
  return _has_magic(contents, _MAGIC['jpeg'])


def _jpeg_is_complete(contents: tf.Tensor) -> tf.Tensor:
  """An end-of-image marker follows the last start-of-scan marker.

  Only the file's tail is searched, which keeps the check cheap: a truncated
  JPEG ends inside scan data, with no end marker after its last scan start;
  a complete one ends with its end marker (or up to ~16 KB after it).
  """
  length = tf.strings.length(contents)
  tail = tf.strings.substr(contents, tf.maximum(length - _JPEG_TAIL, 0),
                           _JPEG_TAIL)
  data = tf.io.decode_raw(tail, tf.uint8)
  marker = tf.equal(data[:-1], 0xFF)
  positions = tf.range(tf.shape(data)[0] - 1)
  last = lambda code: tf.reduce_max(tf.where(
      marker & tf.equal(data[1:], code), positions, -1))
  return last(0xD9) > last(0xDA)


def _png_is_complete(contents: tf.Tensor) -> tf.Tensor:
  """The file ends with the IEND chunk (type, then a 4-byte CRC)."""
  length = tf.strings.length(contents)
  tail = tf.strings.substr(contents, tf.maximum(length - 8, 0), 4)
  return tf.equal(tail, b'IEND')


def is_decodable(contents: tf.Tensor) -> tf.Tensor:
  """A graph-only check that `contents` is a complete, decodable image.

  Recognises JPEG, PNG, GIF, BMP and WebP by their magic bytes, whatever the
  file is called, and rejects truncated JPEGs and PNGs, empty files and
  anything else. Files that pass but still fail to decode are caught later
  by `ignore_errors` (and counted all the same).
  """
  webp = _has_magic(contents, b'RIFF') & _has_magic(contents, b'WEBP', 8)
  return tf.case(
      [(is_jpeg(contents), lambda: _jpeg_is_complete(contents)),
       (_has_magic(contents, _MAGIC['png']),
        lambda: _png_is_complete(contents))],
      default=lambda: (_has_magic(contents, _MAGIC['gif']) |
                       _has_magic(contents, _MAGIC['bmp']) | webp))


def decode_rgb(contents: tf.Tensor) -> tf.Tensor:
  """Decodes any supported image (grayscale, CMYK, PNG, ...) to uint8 RGB."""
  image = tf.io.decode_image(contents, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def _centre_square(height: tf.Tensor, width: tf.Tensor):
  """(top, left, side) of the centred square on the shorter side."""
  side = tf.minimum(height, width)
  return (height - side) // 2, (width - side) // 2, side


def _decoded_square(contents: tf.Tensor):
  """The decoded image's centre square (uint8) and its side."""
  image = decode_rgb(contents)
  shape = tf.shape(image)
  top, left, side = _centre_square(shape[0], shape[1])
  return tf.image.crop_to_bounding_box(image, top, left, side, side), side


def _resized(square: tf.Tensor, resize_size: int,
             antialias: bool) -> tf.Tensor:
  image = tf.image.resize(square, [resize_size, resize_size],
                          method='bilinear', antialias=antialias)
  return tf.clip_by_value(image, 0.0, 255.0)


def base_image_float(contents: tf.Tensor, resize_size: int,
                     antialias: bool = True) -> tf.Tensor:
  """The paper's base image before rounding: float32 [R, R, 3], 0..255.

  Shorter side to R = resize_size by a bilinear (by default antialiased)
  resize, centre R x R square. The square is cut from the original before
  resizing, which is the same image as resizing first, without the wasted
  work; an image that is already R x R is left as it is.
  """
  square, side = _decoded_square(contents)
  image = tf.cond(tf.equal(side, resize_size),
                  lambda: tf.cast(square, tf.float32),
                  lambda: _resized(square, resize_size, antialias))
  image.set_shape([resize_size, resize_size, 3])
  return image


def base_image(contents: tf.Tensor, resize_size: int,
               antialias: bool = True) -> tf.Tensor:
  """`base_image_float` rounded to uint8 [R, R, 3]: what both the raw path
  and `alexnet_jax.tools.prepare` start from.

  A stored (already R x R) base image is only decoded.
  """
  square, side = _decoded_square(contents)
  image = tf.cond(
      tf.equal(side, resize_size), lambda: square,
      lambda: to_uint8(_resized(square, resize_size, antialias)))
  image.set_shape([resize_size, resize_size, 3])
  return image


def base_crop(contents: tf.Tensor, resize_size: int, offset: tf.Tensor,
              crop_size: int, antialias: bool = True) -> tf.Tensor:
  """`base_image(...)[y:y+crop, x:x+crop]` for `offset` (y, x), uint8.

  With the antialiased resize only the crop's window of the base image is
  computed (TF's resize is a ScaleAndTranslate; a translated, smaller output
  grid is the same function for about 30% less work). The vectorised
  kernel's rounding depends on a pixel's place in the grid, so about 0.1% of
  the pixels differ from the whole base image's by one level.
  """
  if not antialias:
    return crop(base_image(contents, resize_size, antialias), offset,
                crop_size)
  square, side = _decoded_square(contents)

  def window():
    scale = (tf.constant(resize_size, tf.float32) /
             tf.cast(tf.stack([side, side]), tf.float32))
    image = tf.raw_ops.ScaleAndTranslate(
        images=tf.cast(square, tf.float32)[None],
        size=tf.constant([crop_size, crop_size]), scale=scale,
        translation=-tf.cast(offset, tf.float32), kernel_type='triangle',
        antialias=True)
    return to_uint8(image[0])

  image = tf.cond(tf.equal(side, resize_size),
                  lambda: crop(square, offset, crop_size), window)
  image.set_shape([crop_size, crop_size, 3])
  return image


def to_uint8(image: tf.Tensor) -> tf.Tensor:
  """Rounds 0..255 floats to uint8."""
  return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


def decode_resized(contents: tf.Tensor, resize_size: int,
                   antialias: bool = True) -> tf.Tensor:
  """`base_image` as float32 on the [0, 1] scale."""
  return tf.cast(base_image(contents, resize_size, antialias),
                 tf.float32) / 255.0


def decode_crop_window(contents: tf.Tensor, resize_size: int, crop_size: int,
                       offset: tf.Tensor, antialias: bool = True) -> tf.Tensor:
  """Approximates `decode_resized(...)[y:y+crop, x:x+crop]` cheaply.

  Maps the crop window at `offset` (y, x) of the resize_size square back to
  the original image, decodes only that window (tf.io.decode_and_crop_jpeg;
  other formats decode fully and crop) and resizes it once to crop_size.
  It differs from the exact path by rounding the window to whole source
  pixels and by resampling once instead of twice, so pixel values differ
  slightly; the content and geometry are the same.
  """
  def window(shape):
    top, left, side = _centre_square(shape[0], shape[1])
    scale = tf.cast(side, tf.float32) / resize_size
    size = tf.maximum(1, tf.cast(tf.round(crop_size * scale), tf.int32))
    size = tf.minimum(size, side)
    start = tf.cast(tf.round(tf.cast(offset, tf.float32) * scale), tf.int32)
    start = tf.minimum(start, side - size) + tf.stack([top, left])
    return tf.stack([start[0], start[1], size, size])

  def jpeg():
    return tf.io.decode_and_crop_jpeg(
        contents, window(tf.io.extract_jpeg_shape(contents)), channels=3)

  def other():
    image = decode_rgb(contents)
    return tf.image.crop_to_bounding_box(
        image, *tf.unstack(window(tf.shape(image)[:2])))

  image = tf.cond(is_jpeg(contents), jpeg, other)
  image.set_shape([None, None, 3])
  image = tf.image.resize(image, [crop_size, crop_size], method='bilinear',
                          antialias=antialias)
  return tf.clip_by_value(image, 0.0, 255.0) / 255.0


def crop(image: tf.Tensor, offset: tf.Tensor, crop_size: int) -> tf.Tensor:
  return tf.image.crop_to_bounding_box(image, offset[0], offset[1], crop_size,
                                       crop_size)
