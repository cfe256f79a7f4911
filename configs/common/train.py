# The `train` settings read by tools/train_net.py. Every key, its default, type, range and meaning
# is defined once, in TrainSchema (projects/dinov3_m2f/config_schema.py); this node holds those
# defaults as a plain dict. Leaf configs import it and override fields:
#   from ..common.train import train
#   train.max_iter = 20000
from dinov3_m2f.config_schema import train_defaults

train = train_defaults()
