"""Every Kafka client of lumstream: finding the cluster (external or the embedded tansu
broker), topics, the producer, consumer settings and positioned consumers, reading whole
topics. The worker, the trainer and the tools all reach Kafka through this wing.
"""
