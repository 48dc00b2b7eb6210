"""Scrapy spiders, their item pipelines and the bundled demo store."""
