# Every package of this tree lives in package/<name>/<name>.mk.
include $(sort $(wildcard $(BR2_EXTERNAL_EDGE_PATH)/package/*/*.mk))
